//! What every evaluation reports beside its top-1: top-5, per-class accuracy and the confusion
//! matrix, from the classifier's scores on the test split, and the confusion matrix as a PNG.
//!
//! Top-k follows the official `evaluate.py`'s `accuracy(output, target, topk=(1, 5))`: a
//! prediction is top-k correct when the label is among the `k` highest scores (`torch.topk`,
//! largest first); with fewer than 5 classes top-5 is top-`classes` (always 1). Per-class
//! accuracy is the recall of each true class (the confusion matrix's diagonal over its row
//! sum); a class without test examples has none (`null`). Scores that are not finite are an
//! error, never a silent miss.
use crate::error::{Error, Result};
use crate::plot;
use image::{Rgb, RgbImage};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Top-1, top-5 and the confusion matrix of one classifier on one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Examples scored.
    pub n: usize,
    /// Fraction whose label has the highest score.
    pub top1: f64,
    /// Fraction whose label is among the 5 highest scores (`min(5, classes)`).
    pub top5: f64,
    /// `confusion[true][predicted]` counts, `classes x classes`.
    pub confusion: Vec<Vec<u64>>,
}

impl Classification {
    /// From `scores` (`N x C`, any float kind and device; higher is more likely) and `labels`
    /// (`N`, each in `0..C`). Fails on a length mismatch, a label out of range or a score that
    /// is NaN or infinite.
    pub fn from_scores(scores: &Tensor, labels: &[i64]) -> Result<Self> {
        let size = scores.size();
        if size.len() != 2 || size[0] as usize != labels.len() {
            return Err(Error::Refused(format!(
                "evaluation scores of shape {size:?} for {} labels: expected N x C with N = {}",
                labels.len(),
                labels.len()
            )));
        }
        let classes = size[1] as usize;
        let scores = scores.to_kind(Kind::Float).to_device(tch::Device::Cpu);
        if classes == 0 || !bool::try_from(scores.isfinite().all()).unwrap_or(false) {
            return Err(Error::Diverged(format!(
                "evaluation scores are not finite or have no classes (shape {size:?}): the classifier diverged"
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
            return Err(Error::Refused(format!("label {l} outside the {classes} classes of the scores")));
        }
        let k = 5.min(classes) as i64;
        let (_, top) = scores.topk(k, 1, true, true);
        let top = Vec::<i64>::try_from(top.contiguous().view([-1]))?;
        let mut confusion = vec![vec![0u64; classes]; classes];
        let (mut hit1, mut hit5) = (0usize, 0usize);
        for (i, &l) in labels.iter().enumerate() {
            let row = &top[i * k as usize..(i + 1) * k as usize];
            confusion[l as usize][row[0] as usize] += 1;
            hit1 += usize::from(row[0] == l);
            hit5 += usize::from(row.contains(&l));
        }
        let n = labels.len();
        let frac = |h: usize| if n == 0 { f64::NAN } else { h as f64 / n as f64 };
        Ok(Self { n, top1: frac(hit1), top5: frac(hit5), confusion })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.confusion.len()
    }

    /// Recall of each true class; `None` for a class with no examples.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect()
    }

    /// The fields every evaluation result carries: `test_top1`, `test_top5`, `per_class_top1`,
    /// `confusion` (rows: true class, columns: predicted) and `class_names` when known.
    pub fn to_json(&self, class_names: Option<&[String]>) -> Value {
        let mut v = json!({
            "test_top1": self.top1,
            "test_top5": self.top5,
            "top5_k": 5.min(self.classes()),
            "n_test": self.n,
            "per_class_top1": self.per_class(),
            "confusion": self.confusion,
        });
        if let Some(names) = class_names.filter(|n| n.len() == self.classes()) {
            v["class_names"] = json!(names);
        }
        v
    }

    /// Reads back what [`Classification::to_json`] wrote (for the PNG and the report); `None`
    /// when `v` has no confusion matrix.
    pub fn from_json(v: &Value) -> Option<Self> {
        let confusion: Vec<Vec<u64>> = serde_json::from_value(v.get("confusion")?.clone()).ok()?;
        if confusion.iter().any(|r| r.len() != confusion.len()) {
            return None;
        }
        let n = confusion.iter().flatten().sum::<u64>() as usize;
        Some(Self { n, top1: v["test_top1"].as_f64()?, top5: v["test_top5"].as_f64().unwrap_or(f64::NAN), confusion })
    }

    /// The confusion matrix as an image: one cell per (true, predicted) pair shaded by its
    /// share of the true class's examples, the share printed in cells large enough, the class
    /// index (and name, when known and there is room) beside each row, per-class accuracy at
    /// the right.
    pub fn confusion_image(&self, title: &str, class_names: Option<&[String]>) -> RgbImage {
        let c = self.classes().max(1) as u32;
        let cell = (720 / c).clamp(1, 44);
        let names = class_names.filter(|n| n.len() == self.classes() && cell >= 9);
        let label_w = match names {
            Some(n) => n.iter().map(|s| plot::text_width(&format!("{} {s}", n.len()))).max().unwrap_or(0) + 12,
            None => plot::text_width(&format!("{c}")) + 12,
        }
        .min(200);
        let (left, top, right, bottom) = (label_w, 40u32, 64u32, 28u32);
        let (w, h) = (left + c * cell + right, top + c * cell + bottom);
        let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
        let black = Rgb([0, 0, 0]);
        plot::text(&mut img, 8, 8, title, black);
        plot::text(&mut img, 8, 20, "rows: true class, columns: predicted, cell: share of the row", Rgb([90, 90, 90]));
        let per_class = self.per_class();
        for (t, row) in self.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total > 0 { count as f64 / total as f64 } else { 0.0 };
                // White to dark blue; the diagonal in green so hits and confusions differ.
                let shade = |full: u8| (255.0 - share * (255.0 - full as f64)).round() as u8;
                let col = if t == p {
                    Rgb([shade(20), shade(120), shade(40)])
                } else {
                    Rgb([shade(20), shade(50), shade(160)])
                };
                let (x0, y0) = (left + p as u32 * cell, top + t as u32 * cell);
                for y in y0..y0 + cell {
                    for x in x0..x0 + cell {
                        img.put_pixel(x, y, col);
                    }
                }
                if cell >= 28 && count > 0 {
                    let s = format!("{:.0}", 100.0 * share);
                    let ink = if share > 0.5 { Rgb([255, 255, 255]) } else { black };
                    let tx = x0 as i64 + (cell as i64 - plot::text_width(&s) as i64) / 2;
                    plot::text(&mut img, tx, y0 as i64 + (cell as i64 - 7) / 2, &s, ink);
                }
            }
            if cell >= 9 {
                let label = match names {
                    Some(n) => format!("{t} {}", n[t]),
                    None => format!("{t}"),
                };
                let y = top as i64 + t as i64 * cell as i64 + (cell as i64 - 7) / 2;
                let max_chars = ((label_w - 10) / 6) as usize;
                plot::text(&mut img, 4, y, &label.chars().take(max_chars).collect::<String>(), black);
                let acc = per_class[t].map_or("-".to_string(), |a| format!("{:.1}", 100.0 * a));
                plot::text(&mut img, (left + c * cell + 6) as i64, y, &acc, black);
            }
        }
        if cell >= 9 {
            for p in 0..c {
                let s = format!("{p}");
                let x = left as i64 + p as i64 * cell as i64 + (cell as i64 - plot::text_width(&s) as i64) / 2;
                if plot::text_width(&s) <= cell {
                    plot::text(&mut img, x, (top + c * cell + 8) as i64, &s, black);
                }
            }
        }
        img
    }
}

/// The confusion-matrix PNG written beside the result file `json` (`x.json` -> `x_confusion.png`).
pub fn confusion_png(json: &Path) -> PathBuf {
    let stem = json.file_stem().and_then(|s| s.to_str()).unwrap_or("eval");
    json.with_file_name(format!("{stem}_confusion.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 6]]) -> Tensor {
        Tensor::from_slice(&rows.concat()).view([rows.len() as i64, 6])
    }

    /// Worked by hand: three examples, six classes.
    #[test]
    fn top1_top5_and_confusion_of_a_hand_worked_case() {
        let scores = t(&[
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0], // label 0: top-1 hit
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], // label 1: ranked 5th -> top-5 hit, predicted 5
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1], // label 5: ranked 6th -> miss, predicted 0
        ]);
        let c = Classification::from_scores(&scores, &[0, 1, 5]).unwrap();
        assert_eq!((c.n, c.top1, c.top5), (3, 1.0 / 3.0, 2.0 / 3.0));
        let mut want = vec![vec![0u64; 6]; 6];
        (want[0][0], want[1][5], want[5][0]) = (1, 1, 1);
        assert_eq!(c.confusion, want);
        assert_eq!(c.per_class(), vec![Some(1.0), Some(0.0), None, None, None, Some(0.0)]);
        let back = Classification::from_json(&c.to_json(None)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn fewer_than_five_classes_make_top5_top_all() {
        let scores = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([2, 2]);
        let c = Classification::from_scores(&scores, &[0, 0]).unwrap();
        assert_eq!((c.top1, c.top5), (0.5, 1.0));
        assert_eq!(c.to_json(None)["top5_k"], json!(2));
    }

    #[test]
    fn nan_scores_a_length_mismatch_and_a_stray_label_are_errors() {
        let mut s = [[0.0f32; 6]; 2];
        s[1][3] = f32::NAN;
        assert!(Classification::from_scores(&t(&s), &[0, 1]).is_err());
        s[1][3] = f32::INFINITY;
        assert!(Classification::from_scores(&t(&s), &[0, 1]).is_err());
        s[1][3] = 0.0;
        assert!(Classification::from_scores(&t(&s), &[0]).is_err());
        assert!(Classification::from_scores(&t(&s), &[0, 6]).is_err());
        assert!(Classification::from_scores(&t(&s), &[0, 5]).is_ok());
    }

    #[test]
    fn the_confusion_image_has_one_cell_per_pair_coloured_by_share() {
        let scores = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let c = Classification::from_scores(&scores, &[0, 1, 1]).unwrap();
        let names = vec!["cat".to_string(), "dog".to_string()];
        let img = c.confusion_image("test", Some(&names));
        // 2 classes: 44 px cells. Row 0 is all hits (dark green diagonal, white off-diagonal);
        // row 1 is half and half.
        let left = img.width() - 64 - 2 * 44;
        let px = |p: u32, t: u32| *img.get_pixel(left + p * 44 + 2, 40 + t * 44 + 2);
        assert_eq!(px(0, 0), Rgb([20, 120, 40]));
        assert_eq!(px(1, 0), Rgb([255, 255, 255]));
        assert_eq!(px(0, 1), Rgb([138, 153, 208]));
        assert_eq!(px(1, 1), Rgb([138, 188, 148]));
    }
}
