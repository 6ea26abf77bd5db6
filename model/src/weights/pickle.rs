//! A safe reader for Python pickles (protocols 0–5), as written by `torch.save`.
//!
//! Nothing in the stream is executed. A small virtual machine interprets the opcodes that build
//! data (numbers, strings, bytes, lists, tuples, dicts, sets, `None`, bools) and handles a short
//! whitelist of "calls" by building the value itself:
//!
//! | global | result |
//! |---|---|
//! | `collections.OrderedDict`, `builtins.dict` | [`Value::Dict`] |
//! | `builtins.set`, `builtins.frozenset` | [`Value::Set`] |
//! | `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor` | [`Value::Tensor`] |
//! | `torch._utils._rebuild_parameter[_with_state]`, `_rebuild_from_type_v2` | the wrapped tensor |
//! | `torch.Size` | [`Value::Tuple`] |
//! | `torch.device` | [`Value::Str`] such as `"cuda:0"` |
//! | `copyreg._reconstructor(cls, base, state)` | [`Value::Object`] of class `cls` |
//!
//! Any other call (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`) becomes an opaque [`Value::Object`] that
//! records the class and its arguments; `BUILD` stores its state there (this is how an
//! `argparse.Namespace` arrives). Malformed input of any kind gives a [`PickleError`]; lengths
//! are checked against the bytes left before anything is allocated, and the expansion of shared
//! (memoised) objects into a tree is bounded.

use std::collections::HashMap;

use super::DType;

/// Deepest container nesting accepted (deeper, or recursive, structures are rejected).
const MAX_DEPTH: usize = 500;

/// An error in a pickle stream: where (byte offset of the opcode) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pickle byte {offset}: {msg}")]
pub struct PickleError {
    /// Byte offset of the opcode being interpreted.
    pub offset: usize,
    /// What is wrong.
    pub msg: String,
}

/// A storage record referenced by a tensor (`('storage', type, key, location, numel)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Record name under `<top>/data/` in the zip.
    pub key: String,
    /// Storage class, e.g. `torch.FloatStorage`.
    pub storage_type: String,
    /// Element type, if the storage class is a known typed storage.
    pub dtype: Option<DType>,
    /// Device the storage was saved from, e.g. `cpu` or `cuda:0`.
    pub location: String,
    /// Number of elements (bytes for `torch.UntypedStorage`) in the record.
    pub numel: usize,
}

/// A tensor as a view of a storage record (not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Stride of each dimension, in elements.
    pub stride: Vec<usize>,
    /// Whether the tensor was saved as requiring gradients.
    pub requires_grad: bool,
}

/// A value built from a pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict or `OrderedDict`: `(key, value)` pairs in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A set or frozenset, in insertion order.
    Set(Vec<Value>),
    /// A reference to a module-level name (class or function), never resolved.
    Global {
        /// Module, e.g. `torch`.
        module: String,
        /// Name in the module, e.g. `FloatStorage`.
        name: String,
    },
    /// The result of a call that is not whitelisted, kept as data and never executed.
    Object {
        /// `(module, name)` of the class or function.
        class: (String, String),
        /// The call's arguments (normally a tuple).
        args: Box<Value>,
        /// State given by `BUILD` (usually a dict of attributes), if any.
        state: Option<Box<Value>>,
        /// Items added by `APPEND`/`APPENDS`/`ADDITEMS`.
        list_items: Vec<Value>,
        /// Items added by `SETITEM`/`SETITEMS`.
        dict_items: Vec<(Value, Value)>,
    },
    /// A persistent id that is not part of a tensor.
    PersistentId(Box<Value>),
    /// A tensor rebuilt by a whitelisted torch function.
    Tensor(TensorRef),
}

impl Value {
    /// Short name of the kind of value (`"dict"`, `"int"`, `"tensor"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global { .. } => "global",
            Value::Object { .. } => "object",
            Value::PersistentId(_) => "persistent id",
            Value::Tensor(_) => "tensor",
        }
    }

    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value under string key `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Element type of a typed torch storage class (`torch.FloatStorage` → f32, …).
pub fn storage_dtype(module: &str, name: &str) -> Option<DType> {
    if module != "torch" && module != "torch.cuda" {
        return None;
    }
    Some(match name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// Parses one pickle from the start of `data` (bytes after its `STOP` are ignored).
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_start: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes_left: 0,
        bytes_left: 0,
    };
    m.run()
}

/// An object under construction; containers refer to other nodes by index, so that memoised
/// objects are shared (mutations after `PUT` are seen by every `GET`), as in Python.
#[derive(Debug)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Object {
        class: (String, String),
        args: usize,
        state: Option<usize>,
        list_items: Vec<usize>,
        dict_items: Vec<(usize, usize)>,
    },
    PersistentId(usize),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    nodes: Vec<Node>,
    stack: Vec<usize>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
    /// Budget for turning the node graph into a tree (shared nodes are copied).
    nodes_left: usize,
    bytes_left: usize,
}

type Res<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Res<T> {
        Err(PickleError {
            offset: self.op_start,
            msg: msg.into(),
        })
    }

    fn left(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.left() {
            return self.err(format!(
                "truncated: needs {n} more bytes, {} left",
                self.left()
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A length field checked against the bytes left in the stream.
    fn length(&mut self, n: u64, what: &str) -> Res<usize> {
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => Ok(n),
            _ => self.err(format!(
                "{what} length {n} exceeds the {} bytes left",
                self.left()
            )),
        }
    }

    fn signed_length(&mut self, n: i32, what: &str) -> Res<usize> {
        if n < 0 {
            return self.err(format!("negative {what} length {n}"));
        }
        self.length(n as u64, what)
    }

    /// Bytes up to the next newline (which is consumed).
    fn line(&mut self) -> Res<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => self.err("truncated: missing end of line"),
        }
    }

    fn text_line(&mut self, what: &str) -> Res<&'a str> {
        let l = self.line()?;
        match std::str::from_utf8(l) {
            Ok(s) => Ok(s),
            Err(_) => self.err(format!("{what} is not valid UTF-8")),
        }
    }

    fn utf8(&self, b: &[u8], what: &str) -> Res<String> {
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => self.err(format!("{what} is not valid UTF-8: {e}")),
        }
    }

    fn add(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn push(&mut self, n: Node) {
        let id = self.add(n);
        self.stack.push(id);
    }

    fn push_val(&mut self, v: Value) {
        self.push(Node::Leaf(v));
    }

    /// Lowest stack index usable by the current mark frame.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Res<usize> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn peek(&self) -> Res<usize> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        match self.stack.last() {
            Some(&v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> Res<Vec<usize>> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK to pop to");
        };
        if m > self.stack.len() {
            return self.err("stack underflow below MARK");
        }
        Ok(self.stack.split_off(m))
    }

    fn pairs(&self, items: Vec<usize>, what: &str) -> Res<Vec<(usize, usize)>> {
        if !items.len().is_multiple_of(2) {
            return self.err(format!(
                "{what} with an odd number of items ({})",
                items.len()
            ));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn memo_get(&mut self, key: u64) -> Res<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo key {key} was never stored")),
        }
    }

    fn memo_put(&mut self, key: u64) -> Res<()> {
        let top = self.peek()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn decimal(&self, s: &str, what: &str) -> Res<u64> {
        match s.trim().parse::<u64>() {
            Ok(v) => Ok(v),
            Err(_) => self.err(format!("bad {what} index {s:?}")),
        }
    }

    fn run(&mut self) -> Res<Value> {
        loop {
            self.op_start = self.pos;
            if self.left() == 0 {
                return self.err("truncated: stream ends before STOP");
            }
            let op = self.u8()?;
            match op {
                // ---- framing and control
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    let n = u64::from_le_bytes(self.array()?);
                    self.length(n, "FRAME")?;
                }
                b'.' => {
                    let top = self.pop()?;
                    let (n, b) = (self.nodes.len(), self.data.len());
                    self.nodes_left = n.saturating_mul(8).saturating_add(1 << 20);
                    self.bytes_left = b.saturating_mul(8).saturating_add(64 << 20);
                    return self.build_value(top, 0);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.peek()?;
                    self.stack.push(top);
                }
                // ---- integers
                b'I' => {
                    let s = self.text_line("INT")?.trim();
                    match s {
                        "00" => self.push_val(Value::Bool(false)),
                        "01" => self.push_val(Value::Bool(true)),
                        _ => {
                            let v = self.parse_int(s)?;
                            self.push_val(Value::Int(v));
                        }
                    }
                }
                b'L' => {
                    let s = self.text_line("LONG")?.trim();
                    let s = s.strip_suffix('L').unwrap_or(s);
                    let v = self.parse_int(s)?;
                    self.push_val(Value::Int(v));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push_val(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_val(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push_val(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = self.decode_long(b)?;
                    self.push_val(Value::Int(v));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = self.signed_length(n, "LONG4")?;
                    let b = self.take(n)?;
                    let v = self.decode_long(b)?;
                    self.push_val(Value::Int(v));
                }
                // ---- floats
                b'F' => {
                    let s = self.text_line("FLOAT")?.trim();
                    match s.parse::<f64>() {
                        Ok(v) => self.push_val(Value::Float(v)),
                        Err(_) => return self.err(format!("bad FLOAT {s:?}")),
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push_val(Value::Float(v));
                }
                // ---- strings
                b'S' => {
                    let l = self.line()?;
                    let b = self.unquote(l)?;
                    let s = self.utf8(&b, "STRING")?;
                    self.push_val(Value::Str(s));
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = self.signed_length(n, "BINSTRING")?;
                    let b = self.take(n)?;
                    let s = self.utf8(b, "BINSTRING")?;
                    self.push_val(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b, "SHORT_BINSTRING")?;
                    self.push_val(Value::Str(s));
                }
                b'V' => {
                    let l = self.line()?;
                    let s = self.raw_unicode_escape(l)?;
                    self.push_val(Value::Str(s));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let n = self.length(n as u64, "BINUNICODE")?;
                    let b = self.take(n)?;
                    let s = self.utf8(b, "BINUNICODE")?;
                    self.push_val(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b, "SHORT_BINUNICODE")?;
                    self.push_val(Value::Str(s));
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array()?);
                    let n = self.length(n, "BINUNICODE8")?;
                    let b = self.take(n)?;
                    let s = self.utf8(b, "BINUNICODE8")?;
                    self.push_val(Value::Str(s));
                }
                // ---- bytes
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push_val(Value::Bytes(b.to_vec()));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let n = self.length(n as u64, "BINBYTES")?;
                    let b = self.take(n)?;
                    self.push_val(Value::Bytes(b.to_vec()));
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.array()?);
                    let n = self.length(
                        n,
                        if op == 0x8e {
                            "BINBYTES8"
                        } else {
                            "BYTEARRAY8"
                        },
                    )?;
                    let b = self.take(n)?;
                    self.push_val(Value::Bytes(b.to_vec()));
                }
                // ---- constants
                b'N' => self.push_val(Value::None),
                0x88 => self.push_val(Value::Bool(true)),
                0x89 => self.push_val(Value::Bool(false)),
                // ---- lists
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items, "APPENDS")?;
                }
                // ---- tuples
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    self.push(Node::Tuple(items));
                }
                // ---- dicts
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items, "DICT")?;
                    self.push(Node::Dict(pairs));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items, "SETITEMS")?;
                    self.extend_dict(pairs, "SETITEMS")?;
                }
                // ---- sets
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.peek()?;
                    match &mut self.nodes[target] {
                        Node::Set(v) | Node::Object { list_items: v, .. } => v.extend(items),
                        other => {
                            let k = node_kind(other);
                            return self.err(format!("ADDITEMS on a {k}"));
                        }
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                // ---- globals and calls
                b'c' => {
                    let module = self.text_line("GLOBAL module")?.to_string();
                    let name = self.text_line("GLOBAL name")?.to_string();
                    self.push_val(global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Leaf(Value::Str(m)), Node::Leaf(Value::Str(n))) => {
                            let g = global(m.clone(), n.clone());
                            self.push_val(g);
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let r = self.call(func, args, 0)?;
                    self.stack.push(r);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let r = self.new_obj(cls, args);
                    self.stack.push(r);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let r = self.new_obj(cls, args);
                    self.stack.push(r);
                }
                b'i' => {
                    let module = self.text_line("INST module")?.to_string();
                    let name = self.text_line("INST name")?.to_string();
                    let items = self.pop_mark()?;
                    let func = self.add(Node::Leaf(global(module, name)));
                    let args = self.add(Node::Tuple(items));
                    let r = self.call(func, args, 0)?;
                    self.stack.push(r);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let func = items.remove(0);
                    let args = self.add(Node::Tuple(items));
                    let r = self.call(func, args, 0)?;
                    self.stack.push(r);
                }
                b'b' => {
                    let state = self.pop()?;
                    let inst = self.peek()?;
                    // Attributes of dicts, lists, tensors… are dropped; objects keep them.
                    if let Node::Object { state: s, .. } = &mut self.nodes[inst] {
                        *s = Some(state);
                    }
                }
                // ---- persistent ids
                b'P' => {
                    let s = self.text_line("PERSID")?.to_string();
                    let id = self.add(Node::Leaf(Value::Str(s)));
                    self.push(Node::PersistentId(id));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Node::PersistentId(pid));
                }
                // ---- memo
                b'p' => {
                    let s = self.text_line("PUT")?;
                    let k = self.decimal(s, "PUT")?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let s = self.text_line("GET")?;
                    let k = self.decimal(s, "GET")?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_get(k)?;
                }
                // ---- unsupported
                0x82..=0x84 => {
                    return self.err("extension-registry opcodes (EXT1/2/4) are not supported");
                }
                0x97 => return self.err("out-of-band buffers (NEXT_BUFFER) are not supported"),
                0x98 => {
                    self.peek()?;
                }
                _ => return self.err(format!("unknown opcode 0x{op:02x}")),
            }
        }
    }

    fn parse_int(&self, s: &str) -> Res<i64> {
        match s.parse::<i64>() {
            Ok(v) => Ok(v),
            Err(_)
                if !s.is_empty()
                    && s.trim_start_matches(['-', '+'])
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                self.err(format!("integer {s} does not fit in 64 bits"))
            }
            Err(_) => self.err(format!("bad integer {s:?}")),
        }
    }

    /// Little-endian two's-complement integer of any length, if it fits in an i64.
    fn decode_long(&self, b: &[u8]) -> Res<i64> {
        if b.is_empty() {
            return Ok(0);
        }
        let negative = b[b.len() - 1] & 0x80 != 0;
        let fill = if negative { 0xff } else { 0 };
        if b.len() > 8 {
            let fits = b[8..].iter().all(|&x| x == fill) && ((b[7] & 0x80 != 0) == negative);
            if !fits {
                return self.err(format!(
                    "integer of {} bytes does not fit in 64 bits",
                    b.len()
                ));
            }
        }
        let mut a = [fill; 8];
        let n = b.len().min(8);
        a[..n].copy_from_slice(&b[..n]);
        Ok(i64::from_le_bytes(a))
    }

    /// Decodes a protocol-0 `STRING` argument: a quoted Python literal with escapes.
    fn unquote(&self, l: &[u8]) -> Res<Vec<u8>> {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let ok = l.len() >= 2 && (l[0] == b'\'' || l[0] == b'"') && l[l.len() - 1] == l[0];
        if !ok {
            return self.err("STRING argument is not a quoted literal");
        }
        let body = &l[1..l.len() - 1];
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            let c = body[i];
            i += 1;
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(&e) = body.get(i) else {
                return self.err("STRING ends with a lone backslash");
            };
            i += 1;
            match e {
                b'\\' | b'\'' | b'"' => out.push(e),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'\n' => {}
                b'x' => {
                    let h = body.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok());
                    match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => out.push(v),
                        None => return self.err("bad \\x escape in STRING"),
                    }
                    i += 2;
                }
                b'0'..=b'7' => {
                    let mut v = (e - b'0') as u32;
                    for _ in 0..2 {
                        match body.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + (d - b'0') as u32;
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push((v & 0xff) as u8);
                }
                _ => {
                    out.push(b'\\');
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Decodes a protocol-0 `UNICODE` argument (raw-unicode-escape: Latin-1 plus `\uXXXX`).
    fn raw_unicode_escape(&self, l: &[u8]) -> Res<String> {
        let mut out = String::with_capacity(l.len());
        let mut i = 0;
        while i < l.len() {
            let c = l[i];
            let digits = match (c, l.get(i + 1)) {
                (b'\\', Some(b'u')) => 4,
                (b'\\', Some(b'U')) => 8,
                _ => 0,
            };
            if digits == 0 {
                out.push(c as char);
                i += 1;
                continue;
            }
            let h = l
                .get(i + 2..i + 2 + digits)
                .and_then(|h| std::str::from_utf8(h).ok());
            match h
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32)
            {
                Some(ch) => out.push(ch),
                None => return self.err("bad \\u escape in UNICODE"),
            }
            i += 2 + digits;
        }
        Ok(out)
    }

    fn extend_list(&mut self, items: Vec<usize>, what: &str) -> Res<()> {
        let target = self.peek()?;
        match &mut self.nodes[target] {
            Node::List(v) | Node::Object { list_items: v, .. } => {
                v.extend(items);
                Ok(())
            }
            other => {
                let k = node_kind(other);
                self.err(format!("{what} on a {k}"))
            }
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(usize, usize)>, what: &str) -> Res<()> {
        let target = self.peek()?;
        match &mut self.nodes[target] {
            Node::Dict(v) | Node::Object { dict_items: v, .. } => {
                v.extend(pairs);
                Ok(())
            }
            other => {
                let k = node_kind(other);
                self.err(format!("{what} on a {k}"))
            }
        }
    }

    fn global_of(&self, id: usize) -> Option<(String, String)> {
        match &self.nodes[id] {
            Node::Leaf(Value::Global { module, name }) => Some((module.clone(), name.clone())),
            _ => None,
        }
    }

    fn tuple_items(&self, id: usize) -> Option<Vec<usize>> {
        match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn object(&mut self, class: (String, String), args: usize) -> usize {
        self.add(Node::Object {
            class,
            args,
            state: None,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        })
    }

    /// `cls.__new__(cls, *args)`: an empty container for known classes, else an object.
    fn new_obj(&mut self, cls: usize, args: usize) -> usize {
        let class = self.global_of(cls);
        match class.as_ref().map(|(m, n)| (m.as_str(), n.as_str())) {
            Some(("collections", "OrderedDict") | ("builtins", "dict")) => {
                self.add(Node::Dict(Vec::new()))
            }
            Some(("builtins", "set" | "frozenset")) => self.add(Node::Set(Vec::new())),
            Some(("builtins", "list")) => self.add(Node::List(Vec::new())),
            _ => {
                let class = class.unwrap_or_else(|| ("<dynamic>".into(), "<dynamic>".into()));
                self.object(class, args)
            }
        }
    }

    /// `func(*args)` for whitelisted functions; anything else becomes an opaque object.
    fn call(&mut self, func: usize, args: usize, depth: usize) -> Res<usize> {
        if depth > MAX_DEPTH {
            return self.err("calls nested too deeply");
        }
        let Some((module, name)) = self.global_of(func) else {
            // Calling the result of another call: keep both as data.
            let a = self.add(Node::Tuple(vec![func, args]));
            return Ok(self.object(("<dynamic>".into(), "<dynamic>".into()), a));
        };
        let items = self.tuple_items(args);
        let opaque = |m: &mut Self| m.object((module.clone(), name.clone()), args);
        let Some(items) = items else {
            return Ok(opaque(self));
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => match items.as_slice() {
                [] => Ok(self.add(Node::Dict(Vec::new()))),
                [src] => {
                    let mut pairs = Vec::new();
                    let src_items = match &self.nodes[*src] {
                        Node::Dict(p) => Some(p.clone()),
                        Node::List(v) | Node::Tuple(v) => {
                            let mut ok = true;
                            for &p in v {
                                match &self.nodes[p] {
                                    Node::Tuple(kv) | Node::List(kv) if kv.len() == 2 => {
                                        pairs.push((kv[0], kv[1]))
                                    }
                                    _ => ok = false,
                                }
                            }
                            ok.then_some(pairs)
                        }
                        _ => None,
                    };
                    match src_items {
                        Some(p) => Ok(self.add(Node::Dict(p))),
                        None => Ok(opaque(self)),
                    }
                }
                _ => Ok(opaque(self)),
            },
            ("builtins", "set" | "frozenset") => match items.as_slice() {
                [] => Ok(self.add(Node::Set(Vec::new()))),
                [src] => match &self.nodes[*src] {
                    Node::List(v) | Node::Tuple(v) | Node::Set(v) => {
                        let v = v.clone();
                        Ok(self.add(Node::Set(v)))
                    }
                    _ => Ok(opaque(self)),
                },
                _ => Ok(opaque(self)),
            },
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                // (storage, offset, size, stride, requires_grad); hooks and metadata unused.
                let vals = self.small_values(&items[..items.len().min(5)])?;
                match rebuild_tensor(&vals) {
                    Ok(t) => Ok(self.add(Node::Leaf(Value::Tensor(t)))),
                    Err(e) => self.err(format!("{module}.{name}: {e}")),
                }
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let grad = items.get(1).and_then(|&g| match &self.nodes[g] {
                    Node::Leaf(Value::Bool(b)) => Some(*b),
                    _ => None,
                });
                match items.first().map(|&t| &self.nodes[t]) {
                    Some(Node::Leaf(Value::Tensor(t))) => {
                        let mut t = t.clone();
                        t.requires_grad = grad.unwrap_or(t.requires_grad);
                        Ok(self.add(Node::Leaf(Value::Tensor(t))))
                    }
                    _ => self.err(format!("{module}.{name}: first argument is not a tensor")),
                }
            }
            ("torch._utils", "_rebuild_from_type_v2") => match items.as_slice() {
                [f, _ty, a, ..] => self.call(*f, *a, depth + 1),
                _ => self.err(format!(
                    "{module}.{name}: expected (func, type, args, state)"
                )),
            },
            ("torch", "Size") => match items.as_slice() {
                [src] => match self.tuple_items(*src) {
                    Some(v) => Ok(self.add(Node::Tuple(v))),
                    None => Ok(opaque(self)),
                },
                _ => Ok(opaque(self)),
            },
            ("torch", "device") => {
                let vals = self.small_values(&items)?;
                match vals.as_slice() {
                    [Value::Str(s)] => Ok(self.add(Node::Leaf(Value::Str(s.clone())))),
                    [Value::Str(s), Value::Int(i)] => {
                        Ok(self.add(Node::Leaf(Value::Str(format!("{s}:{i}")))))
                    }
                    _ => Ok(opaque(self)),
                }
            }
            ("copyreg", "_reconstructor") => match items.first().and_then(|&c| self.global_of(c)) {
                Some(class) => {
                    let empty = self.add(Node::Tuple(Vec::new()));
                    Ok(self.object(class, empty))
                }
                None => Ok(opaque(self)),
            },
            _ => Ok(opaque(self)),
        }
    }

    /// Converts a few call arguments to values (a small, separately bounded budget).
    fn small_values(&mut self, items: &[usize]) -> Res<Vec<Value>> {
        let saved = (self.nodes_left, self.bytes_left);
        self.nodes_left = 4096;
        self.bytes_left = 64 << 10;
        let r = items.iter().map(|&i| self.build_value(i, 0)).collect();
        (self.nodes_left, self.bytes_left) = saved;
        r
    }

    fn charge(&mut self, nodes: usize, bytes: usize) -> Res<()> {
        if nodes > self.nodes_left || bytes > self.bytes_left {
            return self.err("shared (memoised) objects expand to too large a structure");
        }
        self.nodes_left -= nodes;
        self.bytes_left -= bytes;
        Ok(())
    }

    fn build_value(&mut self, id: usize, depth: usize) -> Res<Value> {
        if depth > MAX_DEPTH {
            return self.err(format!(
                "containers nested deeper than {MAX_DEPTH} levels (or recursive)"
            ));
        }
        enum Kids {
            List(Vec<usize>),
            Tuple(Vec<usize>),
            Set(Vec<usize>),
            Dict(Vec<(usize, usize)>),
            Pid(usize),
            Obj(
                (String, String),
                usize,
                Option<usize>,
                Vec<usize>,
                Vec<(usize, usize)>,
            ),
        }
        let kids = match &self.nodes[id] {
            Node::Leaf(v) => {
                let v = v.clone();
                self.charge(1, leaf_bytes(&v))?;
                return Ok(v);
            }
            Node::List(v) => Kids::List(v.clone()),
            Node::Tuple(v) => Kids::Tuple(v.clone()),
            Node::Set(v) => Kids::Set(v.clone()),
            Node::Dict(v) => Kids::Dict(v.clone()),
            Node::PersistentId(p) => Kids::Pid(*p),
            Node::Object {
                class,
                args,
                state,
                list_items,
                dict_items,
            } => Kids::Obj(
                class.clone(),
                *args,
                *state,
                list_items.clone(),
                dict_items.clone(),
            ),
        };
        self.charge(1, 0)?;
        let d = depth + 1;
        let seq = |m: &mut Self, v: Vec<usize>| -> Res<Vec<Value>> {
            v.into_iter().map(|i| m.build_value(i, d)).collect()
        };
        let dict = |m: &mut Self, v: Vec<(usize, usize)>| -> Res<Vec<(Value, Value)>> {
            v.into_iter()
                .map(|(k, x)| Ok((m.build_value(k, d)?, m.build_value(x, d)?)))
                .collect()
        };
        Ok(match kids {
            Kids::List(v) => Value::List(seq(self, v)?),
            Kids::Tuple(v) => Value::Tuple(seq(self, v)?),
            Kids::Set(v) => Value::Set(seq(self, v)?),
            Kids::Dict(v) => Value::Dict(dict(self, v)?),
            Kids::Pid(p) => Value::PersistentId(Box::new(self.build_value(p, d)?)),
            Kids::Obj(class, args, state, list_items, dict_items) => {
                let args = Box::new(self.build_value(args, d)?);
                let state = match state {
                    Some(s) => Some(Box::new(self.build_value(s, d)?)),
                    None => None,
                };
                Value::Object {
                    class,
                    args,
                    state,
                    list_items: seq(self, list_items)?,
                    dict_items: dict(self, dict_items)?,
                }
            }
        })
    }
}

fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::Leaf(v) => v.kind(),
        Node::List(_) => "list",
        Node::Tuple(_) => "tuple",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::Object { .. } => "object",
        Node::PersistentId(_) => "persistent id",
    }
}

fn leaf_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Global { module, name } => module.len() + name.len(),
        Value::Tensor(t) => t.storage.key.len() + t.storage.location.len() + 16 * t.size.len(),
        _ => 0,
    }
}

/// A `Global`, with Python 2 module names mapped as Python 3's unpickler does.
fn global(module: String, name: String) -> Value {
    let module = match module.as_str() {
        "__builtin__" => "builtins".to_string(),
        "copy_reg" => "copyreg".to_string(),
        _ => module,
    };
    Value::Global { module, name }
}

fn non_negative(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => {
            usize::try_from(*i).map_err(|_| format!("{what} {i} is too large"))
        }
        other => Err(format!(
            "{what} must be a non-negative int, got {}",
            short(other)
        )),
    }
}

fn dims(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(d) | Value::List(d) => d.iter().map(|x| non_negative(x, what)).collect(),
        other => Err(format!("{what} must be a tuple, got {}", short(other))),
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Int(i) => format!("int {i}"),
        Value::Str(s) if s.len() <= 40 => format!("str {s:?}"),
        other => other.kind().to_string(),
    }
}

/// Parses the persistent id of a torch zip checkpoint's storage.
fn storage_ref(pid: &Value) -> Result<StorageRef, String> {
    let Value::PersistentId(inner) = pid else {
        return Err(format!(
            "storage must be a persistent id, got {}",
            short(pid)
        ));
    };
    let Value::Tuple(t) = inner.as_ref() else {
        return Err(format!(
            "storage persistent id must be a tuple, got {}",
            short(inner)
        ));
    };
    match t.as_slice() {
        [
            Value::Str(tag),
            Value::Global { module, name },
            key,
            Value::Str(location),
            numel,
        ] if tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => {
                    return Err(format!(
                        "storage key must be a string, got {}",
                        short(other)
                    ));
                }
            };
            Ok(StorageRef {
                key,
                storage_type: format!("{module}.{name}"),
                dtype: storage_dtype(module, name),
                location: location.clone(),
                numel: non_negative(numel, "storage numel")?,
            })
        }
        _ => Err("storage persistent id is not ('storage', type, key, location, numel)".into()),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` or
/// `_rebuild_tensor(storage, offset, size, stride)`.
fn rebuild_tensor(args: &[Value]) -> Result<TensorRef, String> {
    if args.len() < 4 {
        return Err(format!("expected at least 4 arguments, got {}", args.len()));
    }
    let storage = storage_ref(&args[0])?;
    let offset = non_negative(&args[1], "storage offset")?;
    let size = dims(&args[2], "size")?;
    let stride = dims(&args[3], "stride")?;
    if size.len() != stride.len() {
        return Err(format!(
            "size has {} dims but stride has {}",
            size.len(),
            stride.len()
        ));
    }
    let requires_grad = matches!(args.get(4), Some(Value::Bool(true)));
    Ok(TensorRef {
        storage,
        offset,
        size,
        stride,
        requires_grad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    /// Tiny pickle writer for hand-made test streams.
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, x: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(x.len() as u32).to_le_bytes());
            self.op(x.as_bytes())
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.op(&i.to_le_bytes())
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
    }

    #[test]
    fn nested_containers_and_memo() {
        // {'a': [1, -2, 3.5, None, True], 'b': (x, x) where x = {} filled after being memoised}
        let mut w = W::default();
        w.op(b"\x80\x02}q\x00(")
            .str("a")
            .op(b"]q\x01(K\x01J\xfe\xff\xff\xffG\x40\x0c\x00\x00\x00\x00\x00\x00N\x88e");
        w.str("b").op(b"}q\x02h\x02\x86q\x03"); // x memoised as 2, tuple (x, x)
        w.op(b"u"); // close the top-level SETITEMS
        // Now mutate x through the memo: x['k'] = 7; the tuple must see it (shared object).
        w.op(b"h\x02").str("k").op(b"K\x07s0.");
        let v = parse(&w.0).unwrap();
        let x = Value::Dict(vec![(s("k"), Value::Int(7))]);
        let expected = Value::Dict(vec![
            (
                s("a"),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Float(3.5),
                    Value::None,
                    Value::Bool(true),
                ]),
            ),
            (s("b"), Value::Tuple(vec![x.clone(), x])),
        ]);
        assert_eq!(v, expected);
    }

    #[test]
    fn python_pickles_of_all_protocols() {
        // pickle.dumps({'a': [1, 2**40, -5, -2**63, 3.5, None, True, False, 'é\n\\', (1, 2), {1, 2}],
        //               'b': {}, 7: frozenset(), 'c': [[], ()]}, protocol=p) for p = 0..5
        let want = Value::Dict(vec![
            (
                s("a"),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(1 << 40),
                    Value::Int(-5),
                    Value::Int(i64::MIN),
                    Value::Float(3.5),
                    Value::None,
                    Value::Bool(true),
                    Value::Bool(false),
                    s("é\n\\"),
                    Value::Tuple(vec![Value::Int(1), Value::Int(2)]),
                    Value::Set(vec![Value::Int(1), Value::Int(2)]),
                ]),
            ),
            (s("b"), Value::Dict(vec![])),
            (Value::Int(7), Value::Set(vec![])),
            (
                s("c"),
                Value::List(vec![Value::List(vec![]), Value::Tuple(vec![])]),
            ),
        ]);
        for (p, h) in PY_PICKLES.iter().enumerate() {
            let v = parse(&hex(h)).unwrap_or_else(|e| panic!("protocol {p}: {e}"));
            assert_eq!(v, want, "protocol {p}");
        }
    }

    /// Generated with CPython 3.11 (see `python_pickles_of_all_protocols`).
    const PY_PICKLES: [&str; 6] = [
        "286470300a56610a70310a286c70320a49310a614c313039393531313632373737364c0a61492d350a614c2d39323233\
         3337323033363835343737353830384c0a6146332e350a614e614930310a614930300a6156e95c75303030615c753030\
         35630a70330a612849310a49320a7470340a61635f5f6275696c74696e5f5f0a7365740a70350a28286c70360a49310a\
         6149320a617470370a5270380a617356620a70390a28647031300a7349370a635f5f6275696c74696e5f5f0a66726f7a\
         656e7365740a7031310a28286c7031320a747031330a527031340a7356630a7031350a286c7031360a286c7031370a61\
         287461732e",
        "7d71002858010000006171015d7102284b014c313039393531313632373737364c0a4afbffffff4c2d39323233333732\
         3033363835343737353830384c0a47400c0000000000004e4930310a4930300a5804000000c3a90a5c7103284b014b02\
         747104635f5f6275696c74696e5f5f0a7365740a7105285d7106284b014b02657471075271086558010000006271097d\
         710a4b07635f5f6275696c74696e5f5f0a66726f7a656e7365740a710b285d710c74710d52710e580100000063710f5d\
         7110285d71112965752e",
        "80027d71002858010000006171015d7102284b018a060000000000014afbffffff8a08000000000000008047400c0000\
         000000004e88895804000000c3a90a5c71034b014b02867104635f5f6275696c74696e5f5f0a7365740a71055d710628\
         4b014b02658571075271086558010000006271097d710a4b07635f5f6275696c74696e5f5f0a66726f7a656e7365740a\
         710b5d710c85710d52710e580100000063710f5d7110285d71112965752e",
        "80037d71002858010000006171015d7102284b018a060000000000014afbffffff8a08000000000000008047400c0000\
         000000004e88895804000000c3a90a5c71034b014b02867104636275696c74696e730a7365740a71055d7106284b014b\
         02658571075271086558010000006271097d710a4b07636275696c74696e730a66726f7a656e7365740a710b5d710c85\
         710d52710e580100000063710f5d7110285d71112965752e",
        "8004955d000000000000007d94288c0161945d94284b018a060000000000014afbffffff8a0800000000000000804740\
         0c0000000000004e88898c04c3a90a5c944b014b0286948f94284b014b0290658c0162947d944b072891948c0163945d\
         94285d942965752e",
        "8005955d000000000000007d94288c0161945d94284b018a060000000000014afbffffff8a0800000000000000804740\
         0c0000000000004e88898c04c3a90a5c944b014b0286948f94284b014b0290658c0162947d944b072891948c0163945d\
         94285d942965752e",
    ];

    #[test]
    fn tensor_rebuild_with_strides_and_parameter() {
        // OrderedDict([('w', Parameter(_rebuild_tensor_v2(storage '0', offset 1, size (3, 2),
        // stride (1, 3), False, OrderedDict()))), ('n', torch.Size([2, 3])), ('d', device('cuda', 1))])
        let mut w = W::default();
        w.op(b"\x80\x02")
            .global("collections", "OrderedDict")
            .op(b"q\x00)Rq\x01(")
            .str("w");
        w.global("torch._utils", "_rebuild_parameter").op(b"(");
        w.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "HalfStorage");
        w.str("0")
            .str("cuda:0")
            .int(8)
            .op(b"tQ")
            .int(1)
            .int(3)
            .int(2)
            .op(b"\x86")
            .int(1)
            .int(3)
            .op(b"\x86\x89h\x00)R");
        w.op(b"tR\x88h\x00)RtR");
        w.str("n")
            .global("torch", "Size")
            .int(2)
            .int(3)
            .op(b"\x86\x85R");
        w.str("d")
            .global("torch", "device")
            .str("cuda")
            .int(1)
            .op(b"\x86R");
        w.op(b"u.");
        let v = parse(&w.0).unwrap();
        let Value::Tensor(t) = v.get("w").unwrap() else {
            panic!("{v:?}")
        };
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.dtype, Some(DType::F16));
        assert_eq!(t.storage.storage_type, "torch.HalfStorage");
        assert_eq!(t.storage.location, "cuda:0");
        assert_eq!(t.storage.numel, 8);
        assert_eq!(
            (t.offset, t.size.as_slice(), t.stride.as_slice()),
            (1, &[3, 2][..], &[1, 3][..])
        );
        assert!(t.requires_grad);
        assert_eq!(
            v.get("n"),
            Some(&Value::Tuple(vec![Value::Int(2), Value::Int(3)]))
        );
        assert_eq!(v.get("d"), Some(&s("cuda:1")));
    }

    #[test]
    fn namespace_and_unknown_objects_are_kept_as_data() {
        let mut w = W::default();
        w.op(b"\x80\x02(")
            .global("argparse", "Namespace")
            .op(b")\x81}(")
            .str("lr")
            .int(3)
            .op(b"ub");
        w.global("os", "system").str("rm -rf /").op(b"\x85R"); // never executed
        w.op(b"l.");
        let v = parse(&w.0).unwrap();
        let Value::List(items) = v else { panic!() };
        match &items[0] {
            Value::Object {
                class,
                state: Some(st),
                ..
            } => {
                assert_eq!(class, &("argparse".to_string(), "Namespace".to_string()));
                assert_eq!(st.get("lr"), Some(&Value::Int(3)));
            }
            other => panic!("{other:?}"),
        }
        match &items[1] {
            Value::Object { class, args, .. } => {
                assert_eq!(class.1, "system");
                assert_eq!(**args, Value::Tuple(vec![s("rm -rf /")]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_streams_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "truncated"),
            (b"\x80\x02", "truncated"),
            (b"\x80\x02K", "truncated"),
            (b"\x80\x09N.", "protocol"),
            (b"\x80\x02a.", "underflow"),
            (b"\x80\x02(.", "underflow"),
            (b"\x80\x02h\x05.", "memo"),
            (b"\x80\x02\xff.", "unknown opcode"),
            (b"\x80\x02X\xff\xff\xff\xffabc.", "exceeds"),
            (b"\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.", "exceeds"),
            (b"\x80\x02\x8b\xff\xff\xff\xff.", "negative"),
            (
                b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
                "64 bits",
            ),
            (b"\x80\x02X\x02\x00\x00\x00\xc3\x28.", "UTF-8"),
            (b"\x80\x02Nu.", "MARK"),
            (b"\x80\x02(NNNd.", "odd"),
            (b"\x80\x02K\x01K\x02s.", "underflow"),
            (b"\x80\x02NK\x01K\x02s.", "SETITEM on a None"),
            (b"\x80\x02K\x01N\x85\x85q\x00.", ""),
            (b"\x80\x02I12x\n.", "integer"),
            (b"\x80\x02S'abc\n.", "quoted"),
        ];
        for (bytes, needle) in cases {
            match parse(bytes) {
                Ok(v) if needle.is_empty() => drop(v),
                Ok(v) => panic!("{bytes:?} parsed to {v:?}"),
                Err(e) => assert!(e.to_string().contains(needle), "{bytes:?}: {e}"),
            }
        }
    }

    #[test]
    fn recursion_and_expansion_bombs_are_bounded() {
        // l = []; l.append(l)
        let r = parse(b"\x80\x02]q\x00h\x00a.");
        assert!(r.unwrap_err().msg.contains("deeper"));
        // x0 = [0]; x(i+1) = [xi, xi]; 60 levels would be 2^60 nodes as a tree.
        let mut w = W::default();
        w.op(b"\x80\x02]q\x00K\x00a");
        for i in 1..60u32 {
            w.op(b"0]")
                .op(b"r")
                .op(&i.to_le_bytes())
                .op(b"j")
                .op(&(i - 1).to_le_bytes());
            w.op(b"a").op(b"j").op(&(i - 1).to_le_bytes()).op(b"a");
        }
        w.op(b".");
        let r = parse(&w.0);
        assert!(r.unwrap_err().msg.contains("too large"));
        // 100k nested lists: rejected, no stack overflow.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert!(parse(&deep).unwrap_err().msg.contains("deeper"));
    }

    #[test]
    fn truncations_and_random_bytes_never_panic() {
        let mut w = W::default();
        w.op(b"\x80\x02")
            .global("collections", "OrderedDict")
            .op(b")R(")
            .str("w");
        w.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "FloatStorage");
        w.str("0")
            .str("cpu")
            .int(6)
            .op(b"tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89")
            .global("collections", "OrderedDict");
        w.op(b")RtR")
            .str("x")
            .op(b"\x8a\x02\xff\x7fG\x3f\xf0\x00\x00\x00\x00\x00\x00\x86u.");
        let good = w.0.clone();
        assert!(parse(&good).is_ok());
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n} parsed");
        }
        // Random streams and random mutations of a valid one: Ok or Err, never a panic.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let n = (rnd() % 200) as usize;
            let mut b: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            if rnd() % 2 == 0 {
                b.splice(0..0, [0x80, 2]);
            }
            let _ = parse(&b);
            let mut m = good.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % m.len();
                m[i] = rnd() as u8;
            }
            let _ = parse(&m);
        }
    }
}
