//! A weights-only pickle reader: the subset of Python's pickle machine that `torch.save` files
//! use, with the globals `torch.load(..., weights_only=True)` accepts, and nothing that runs
//! code. Any other global is refused with its name.
//!
//! Why not libtorch's own unpickler (`torch::jit::pickle_load`): it turns every
//! `collections.OrderedDict` into `None` (it only expects them in tensor hooks), so it fails on
//! every `state_dict()` saved from Python ("Expected GenericDict but got None", checked against
//! libtorch 2.11). Why not a crate: `serde-pickle` has no persistent ids (tensor storages) nor
//! `REDUCE` of arbitrary globals; candle's reader would bring a second tensor library into the
//! build for ~400 lines. This machine only builds values: a global is a name, `REDUCE` of an
//! allowed name builds a value, every other name is an error before anything is called.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A storage record of the archive (`BINPERSID ('storage', type, key, location, numel)`).
#[derive(Debug, Clone)]
pub struct StorageRef {
    /// Element type, from the storage class (`torch.FloatStorage` -> f32).
    pub kind: tch::Kind,
    /// Record name under `<archive>/data/`.
    pub key: String,
    /// Elements (of `kind`).
    pub numel: i64,
}

/// A tensor to rebuild from a storage (`torch._utils._rebuild_tensor_v2`).
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// First element, in storage elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

/// A pickled value. Lists and dicts are shared (`Rc`) because the memo may hand out the same
/// container that later opcodes fill.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // Python's own types, named as in Python.
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    /// A list, set or frozenset.
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict or OrderedDict, items in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// An allowed global, by its dotted name, before `REDUCE` applies it.
    Global(&'static str),
    Storage(StorageRef),
    Tensor(Box<TensorRef>),
    /// The `MARK` sentinel on the stack.
    Mark,
}

/// Globals a weights-only reader may name (PyTorch's `_get_allowed_globals`, the part a
/// checkpoint of dense tensors uses).
const ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
    "torch.Size",
    "torch.device",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.UntypedStorage",
];

fn storage_kind(name: &str) -> Option<tch::Kind> {
    use tch::Kind::*;
    Some(match name {
        "torch.FloatStorage" => Float,
        "torch.DoubleStorage" => Double,
        "torch.HalfStorage" => Half,
        "torch.BFloat16Storage" => BFloat16,
        "torch.LongStorage" => Int64,
        "torch.IntStorage" => Int,
        "torch.ShortStorage" => Int16,
        "torch.CharStorage" => Int8,
        "torch.ByteStorage" | "torch.UntypedStorage" => Uint8,
        "torch.BoolStorage" => Bool,
        _ => return None,
    })
}

/// Why a pickle was not read.
#[derive(Debug)]
pub enum PickleError {
    /// A global outside the weights-only allowlist.
    Global(String),
    /// Anything else: a malformed or truncated stream, an unsupported opcode.
    Malformed(String),
}

type R<T> = std::result::Result<T, PickleError>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(PickleError::Malformed(msg.into()))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> R<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => bad(format!("truncated at byte {} (wanted {n} more)", self.pos)),
        }
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let n =
            rest.iter().position(|&b| b == b'\n').ok_or_else(|| PickleError::Malformed("unterminated line".into()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s.to_string())),
            Err(_) => bad("string is not UTF-8"),
        }
    }
    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => bad("stack underflow"),
            Some(v) => Ok(v),
        }
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark));
        match at {
            Some(i) => {
                let items = self.stack.split_off(i + 1);
                self.stack.pop();
                Ok(items)
            }
            None => bad("no MARK on the stack"),
        }
    }
    fn top(&mut self) -> R<&mut Value> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => bad("stack underflow"),
            Some(v) => Ok(v),
        }
    }
    fn global(&self, module: &str, name: &str) -> R<Value> {
        let full = format!("{module}.{name}");
        // `torch.load` maps the Python 2 module names the same way.
        let full = match full.as_str() {
            "__builtin__.set" => "builtins.set".to_string(),
            _ => full,
        };
        match ALLOWED.iter().find(|a| **a == full) {
            Some(a) => Ok(Value::Global(a)),
            None => Err(PickleError::Global(full)),
        }
    }

    fn run(mut self) -> R<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32; // MEMOIZE
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'p' => {
                    let k: u32 = self.line()?.trim().parse().map_err(|_| PickleError::Malformed("bad PUT".into()))?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' | b'g' => {
                    let k = match op {
                        b'h' => self.u8()? as u32,
                        b'j' => self.u32()?,
                        _ => self.line()?.trim().parse().map_err(|_| PickleError::Malformed("bad GET".into()))?,
                    };
                    let v =
                        self.memo.get(&k).cloned().ok_or_else(|| PickleError::Malformed(format!("memo {k} unset")))?;
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement, up to 8 bytes fit an i64.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return bad(format!("integer of {n} bytes"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.trim() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| PickleError::Malformed(format!("bad INT {s}")))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'U' | b'T' | b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => self.u8()? as usize,
                        0x8e => self.u64()? as usize,
                        _ => self.u32()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    // Python 2 strings (U, T) are text in every checkpoint we read.
                    self.stack.push(match op {
                        b'U' | b'T' => Value::Str(String::from_utf8_lossy(&b).into_owned()),
                        _ => Value::Bytes(b),
                    });
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b, c]));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        _ => return bad("APPEND to a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        _ => return bad("APPENDS to a non-list"),
                    }
                }
                b'}' => self.stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(d))));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        _ => return bad("SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = pairs(self.pop_mark()?)?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().extend(items),
                        _ => return bad("SETITEMS on a non-dict"),
                    }
                }
                0x8f => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))), // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        _ => return bad("ADDITEMS on a non-set"),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(&m, &n)?;
                            self.stack.push(g);
                        }
                        _ => return bad("STACK_GLOBAL without two strings"),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE (callable, args) and NEWOBJ (class, args): same for our globals.
                    let args = match self.pop()? {
                        Value::Tuple(a) => a,
                        _ => return bad("REDUCE/NEWOBJ arguments are not a tuple"),
                    };
                    let f = match self.pop()? {
                        Value::Global(g) => g,
                        _ => return bad("REDUCE/NEWOBJ of a value that is not a global"),
                    };
                    let v = apply(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: an OrderedDict's `_metadata`, a parameter's state: not needed.
                    let _state = self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.stack.push(v);
                }
                other => {
                    return bad(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1));
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return bad("odd number of dict items");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn int(v: &Value) -> R<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        _ => bad(format!("expected an integer, got {v:?}")),
    }
}

fn ints(v: &Value) -> R<Vec<i64>> {
    match v {
        Value::Tuple(t) => t.iter().map(int).collect(),
        Value::List(l) => l.borrow().iter().map(int).collect(),
        _ => bad("expected a tuple of integers"),
    }
}

/// `('storage', storage_type, key, location, numel)`.
fn persistent(pid: Value) -> R<Value> {
    let Value::Tuple(t) = pid else { return bad("persistent id is not a tuple") };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(ty), Value::Str(key), Value::Str(_location), numel] if tag == "storage" => {
            let kind = storage_kind(ty).ok_or_else(|| PickleError::Malformed(format!("{ty} is not a storage type")))?;
            Ok(Value::Storage(StorageRef { kind, key: key.clone(), numel: int(numel)? }))
        }
        _ => bad(format!("unknown persistent id {t:?}")),
    }
}

fn apply(f: &'static str, args: Vec<Value>) -> R<Value> {
    match f {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
        "torch._utils._rebuild_tensor_v2" => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            let [Value::Storage(s), offset, size, stride, ..] = args.as_slice() else {
                return bad("_rebuild_tensor_v2 without a storage");
            };
            Ok(Value::Tensor(Box::new(TensorRef {
                storage: s.clone(),
                offset: int(offset)?,
                size: ints(size)?,
                stride: ints(stride)?,
            })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => bad("_rebuild_parameter without a tensor"),
            }
        }
        "torch._tensor._rebuild_from_type_v2" => {
            // (func, type, args, state): a tensor with Python attributes; rebuild with func.
            let mut it = args.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(Value::Global(func)), Some(Value::Global(_ty)), Some(Value::Tuple(a))) => apply(func, a),
                _ => bad("malformed _rebuild_from_type_v2"),
            }
        }
        "torch.Size" => Ok(args.into_iter().next().unwrap_or(Value::Tuple(Vec::new()))),
        "torch.device" => Ok(args.into_iter().next().unwrap_or(Value::None)),
        "_codecs.encode" => match args.first() {
            Some(Value::Str(s)) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
            _ => bad("_codecs.encode without a string"),
        },
        "builtins.set" | "builtins.frozenset" => match args.into_iter().next() {
            Some(l @ Value::List(_)) => Ok(l),
            None => Ok(Value::List(Rc::new(RefCell::new(Vec::new())))),
            _ => bad("set of a non-list"),
        },
        other => bad(format!("{other} cannot be called")),
    }
}

/// Runs a pickle stream (`data.pkl`) to its value.
pub fn load(data: &[u8]) -> std::result::Result<Value, PickleError> {
    Machine { data, pos: 0, stack: Vec::new(), memo: HashMap::new() }.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_global_by_name() {
        // protocol 2: GLOBAL 'os system', then a call (never reached).
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        match load(p) {
            Err(PickleError::Global(g)) => assert_eq!(g, "os.system"),
            other => panic!("expected a refused global, got {other:?}"),
        }
    }

    #[test]
    fn reads_ordered_dict_with_items_and_build() {
        // pickle.dumps(OrderedDict(a=1, b=[2.5, True]) with _metadata set, protocol=2)
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03]q\x04(G@\x04\x00\x00\x00\x00\x00\x00\x88eu}q\x05X\t\x00\x00\x00_metadataq\x06}q\x07sb.";
        let Value::Dict(d) = load(p).unwrap() else { panic!("not a dict") };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[0], (Value::Str(k), Value::Int(1)) if k == "a"));
        let Value::List(l) = &d[1].1 else { panic!("not a list") };
        assert!(matches!(l.borrow().as_slice(), [Value::Float(x), Value::Bool(true)] if *x == 2.5));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        assert!(matches!(load(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab"), Err(PickleError::Malformed(_))));
    }
}
