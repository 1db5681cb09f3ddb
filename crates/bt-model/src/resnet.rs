//! The encoders: the seed notebook's Keras ResNet-34 and torchvision's ResNets (CIFAR or
//! ImageNet stem).
//!
//! All name their variables like torchvision's `ResNet` (`conv1`, `bn1`, `layer{1..4}.{j}.conv1`,
//! `...downsample.0`), so a torchvision-style checkpoint is a torchvision state dict.
use crate::layers::{glorot, tf_avg_pool_same, tf_max_pool, BatchNorm, Conv2d, Ctx, Init, Padding, Scope};
use tch::Tensor;

/// The notebook's residual block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> add -> ReLU. The
/// first block of stages 2-4 strides its first conv and projects the shortcut with a 1x1/2
/// `valid` conv (with bias, without BN).
struct KerasBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Conv2d>,
}

impl KerasBlock {
    fn new(s: &Scope, c_in: i64, c: i64, stride: i64) -> Self {
        let same = Padding::TfSame { pre: 0 };
        let conv1 = Conv2d::new(&s.sub("conv1"), c_in, c, 3, stride, same, true, glorot(9 * c_in, 9 * c));
        let bn1 = BatchNorm::keras(&s.sub("bn1"), c);
        let conv2 = Conv2d::new(&s.sub("conv2"), c, c, 3, 1, same, true, glorot(9 * c, 9 * c));
        let bn2 = BatchNorm::keras(&s.sub("bn2"), c);
        let shortcut = (stride != 1 || c_in != c).then(|| {
            let s = s.sub("downsample").sub(0);
            Conv2d::new(&s, c_in, c, 1, stride, Padding::Valid, true, glorot(c_in, c))
        });
        Self { conv1, bn1, conv2, bn2, shortcut }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self.bn1.forward(&self.conv1.forward(x, ctx), ctx).relu_();
        let y = self.bn2.forward(&self.conv2.forward(&y, ctx), ctx);
        match &self.shortcut {
            Some(c) => (y + c.forward(x, ctx)).relu_(),
            None => (y + x).relu_(),
        }
    }
}

/// The seed's encoder (Keras semantics); see the crate doc for the layer list.
pub(crate) struct KerasResnet34 {
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<KerasBlock>>,
    features: i64,
    name: String,
}

impl KerasResnet34 {
    /// `width`: filters of the first stage (64 in the notebook); stages use 1, 2, 4, 8 times it.
    pub(crate) fn new(s: &Scope, width: i64) -> Self {
        let conv1 =
            Conv2d::new(&s.sub("conv1"), 3, width, 7, 2, Padding::TfSame { pre: 3 }, true, glorot(49 * 3, 49 * width));
        let bn1 = BatchNorm::keras(&s.sub("bn1"), width);
        let mut stages = Vec::new();
        let mut c_in = width;
        for (i, &n) in [3, 4, 6, 3].iter().enumerate() {
            let c = width << i;
            let stage = s.sub(format!("layer{}", i + 1));
            let blocks = (0..n)
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let b = KerasBlock::new(&stage.sub(j), c_in, c, stride);
                    c_in = c;
                    b
                })
                .collect();
            stages.push(blocks);
        }
        Self { conv1, bn1, stages, features: c_in, name: s.name().to_string() }
    }

    pub(crate) fn features(&self) -> i64 {
        self.features
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self.bn1.forward(&self.conv1.forward(x, ctx), ctx).relu_();
        let mut y = tf_max_pool(&y, 3, 2);
        ctx.record(&format!("{}.maxpool", self.name), "MaxPool2d 3x3/2 tf-same".into(), &y, 0, 0);
        for stage in &self.stages {
            for b in stage {
                y = b.forward(&y, ctx);
            }
        }
        let y = tf_avg_pool_same(&y, 2);
        ctx.record(&format!("{}.avgpool", self.name), "AvgPool2d 2x2 tf-same".into(), &y, 0, 0);
        // Keras flattens NHWC: the same order as NCHW only when the map is 1x1 (32x32 inputs).
        let y = y.permute([0, 2, 3, 1]).flatten(1, -1);
        ctx.record(&format!("{}.flatten", self.name), "Flatten (NHWC order)".into(), &y, 0, 0);
        y
    }
}

/// torchvision's `conv3x3`/`conv1x1` init: kaiming normal, fan_out, ReLU gain.
fn kaiming_out(c_out: i64, k: i64) -> Init {
    Init::Normal((2.0 / (c_out * k * k) as f64).sqrt())
}

/// torchvision `BasicBlock` (expansion 1) or `Bottleneck` (expansion 4, stride on the 3x3: "v1.5").
struct TorchBlock {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl TorchBlock {
    fn new(s: &Scope, c_in: i64, planes: i64, stride: i64, bottleneck: bool, zero_init: bool) -> Self {
        let c_out = if bottleneck { planes * 4 } else { planes };
        // (c_in, c_out, kernel, stride) of each conv, named conv1.. with bn1..
        let shapes: Vec<(i64, i64, i64, i64)> = if bottleneck {
            vec![(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, c_out, 1, 1)]
        } else {
            vec![(c_in, planes, 3, stride), (planes, planes, 3, 1)]
        };
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for (i, &(ci, co, k, st)) in shapes.iter().enumerate() {
            let pad = Padding::Symmetric(k / 2);
            convs.push(Conv2d::new(&s.sub(format!("conv{}", i + 1)), ci, co, k, st, pad, false, kaiming_out(co, k)));
            bns.push(BatchNorm::torch(&s.sub(format!("bn{}", i + 1)), co));
        }
        if zero_init {
            // torchvision's zero_init_residual: each block starts as the identity.
            tch::no_grad(|| {
                let _ = bns.last().expect("blocks have BNs").weight.shallow_clone().zero_();
            });
        }
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = s.sub("downsample");
            let conv = Conv2d::new(&d.sub(0), c_in, c_out, 1, stride, Padding::Valid, false, kaiming_out(c_out, 1));
            (conv, BatchNorm::torch(&d.sub(1), c_out))
        });
        Self { convs, bns, downsample }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().zip(&self.bns).enumerate() {
            y = b.forward(&c.forward(&y, ctx), ctx);
            if i < last {
                y = y.relu_();
            }
        }
        match &self.downsample {
            Some((c, b)) => (y + b.forward(&c.forward(x, ctx), ctx)).relu_(),
            None => (y + x).relu_(),
        }
    }
}

/// The stem of a torchvision ResNet: what runs before `layer1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stem {
    /// CIFAR: 3x3/1 conv (pad 1), BN, ReLU, no max-pool (32x32 inputs keep a 4x4 map at layer4).
    Cifar,
    /// torchvision's own: 7x7/2 conv (pad 3), BN, ReLU, 3x3/2 max-pool (pad 1): /4 before layer1.
    ImageNet,
}

/// torchvision's `ResNet` without `fc`: `conv1`, `bn1`, (`maxpool`), `layer1..4`, adaptive
/// average pool + flatten, with the CIFAR or the ImageNet [`Stem`].
pub(crate) struct TorchResnet {
    stem: Stem,
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<TorchBlock>>,
    features: i64,
    name: String,
}

impl TorchResnet {
    /// `depth`: 18, 34 or 50; `width`: planes of `layer1` (64 in torchvision).
    pub(crate) fn new(s: &Scope, stem: Stem, depth: u32, width: i64, zero_init_residual: bool) -> Self {
        let (blocks, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            _ => unreachable!("depth checked by the caller"),
        };
        let (k, stride) = match stem {
            Stem::Cifar => (3, 1),
            Stem::ImageNet => (7, 2),
        };
        let conv1 =
            Conv2d::new(&s.sub("conv1"), 3, width, k, stride, Padding::Symmetric(k / 2), false, kaiming_out(width, k));
        let bn1 = BatchNorm::torch(&s.sub("bn1"), width);
        let mut c_in = width;
        let mut stages = Vec::new();
        for (i, &n) in blocks.iter().enumerate() {
            let planes = width << i;
            let stage = s.sub(format!("layer{}", i + 1));
            let v = (0..n)
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let b = TorchBlock::new(&stage.sub(j), c_in, planes, stride, bottleneck, zero_init_residual);
                    c_in = if bottleneck { planes * 4 } else { planes };
                    b
                })
                .collect();
            stages.push(v);
        }
        Self { stem, conv1, bn1, stages, features: c_in, name: s.name().to_string() }
    }

    pub(crate) fn features(&self) -> i64 {
        self.features
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut y = self.bn1.forward(&self.conv1.forward(x, ctx), ctx).relu_();
        if self.stem == Stem::ImageNet {
            // Padding cells are -inf for max_pool2d, so they never win (nn.MaxPool2d(3, 2, 1)).
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            ctx.record(&format!("{}.maxpool", self.name), "MaxPool2d 3x3/2 pad 1".into(), &y, 0, 0);
        }
        for stage in &self.stages {
            for b in stage {
                y = b.forward(&y, ctx);
            }
        }
        let y = y.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        ctx.record(&format!("{}.avgpool", self.name), "AdaptiveAvgPool2d 1x1 + flatten".into(), &y, 0, 0);
        y
    }
}
