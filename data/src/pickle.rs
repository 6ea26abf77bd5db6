//! A minimal reader for plain-data pickles.
//!
//! Handles protocols 0–5 as far as they encode `None`, booleans, integers, floats, strings,
//! bytes, lists, tuples and dicts — what `pickle.dump` writes for the V-COCO detection list of
//! `generate_vcoco_official.py`. Anything that would import or call Python code (`GLOBAL`,
//! `REDUCE`, `BUILD`, ...) is refused with an error; nothing is ever executed.

use std::collections::HashMap;
use std::path::Path;

use crate::DataError;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleValue {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<PickleValue>),
    /// A tuple.
    Tuple(Vec<PickleValue>),
    /// A dict, in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
}

impl PickleValue {
    /// The value as f64 when it is a number (int, float or bool).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PickleValue::Int(i) => Some(*i as f64),
            PickleValue::Float(f) => Some(*f),
            PickleValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// The value as a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PickleValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Decodes Python's `raw-unicode-escape` (the text of a protocol-0 `UNICODE` argument): bytes are
/// Latin-1 characters, except `\uXXXX` and `\UXXXXXXXX` escapes.
pub(crate) fn decode_raw_unicode_escape(b: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let n = match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            (c, _) => {
                out.push(char::from(c));
                i += 1;
                continue;
            }
        };
        let hex = b
            .get(i + 2..i + 2 + n)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok());
        let c = hex
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .ok_or_else(|| format!("bad unicode escape at byte {i} of a text argument"))?;
        out.push(c);
        i += 2 + n;
    }
    Ok(out)
}

/// Reads a pickle file.
pub fn read_pickle(path: impl AsRef<Path>) -> Result<PickleValue, DataError> {
    let path = path.as_ref();
    let bytes = crate::read_bytes(path)?;
    parse_pickle(&bytes).map_err(|msg| DataError::Pickle {
        path: path.to_path_buf(),
        msg,
    })
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(PickleValue),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
}

enum Item {
    Mark,
    Obj(usize),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Node>,
    stack: Vec<Item>,
    memo: HashMap<u32, usize>,
}

const MAX_DEPTH: usize = 256;

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.pos)),
        }
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated text argument")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "text argument is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn push_node(&mut self, n: Node) {
        self.arena.push(n);
        self.stack.push(Item::Obj(self.arena.len() - 1));
    }
    fn push_leaf(&mut self, v: PickleValue) {
        self.push_node(Node::Leaf(v));
    }
    fn pop_obj(&mut self) -> Result<usize, String> {
        match self.stack.pop() {
            Some(Item::Obj(i)) => Ok(i),
            Some(Item::Mark) => Err("unexpected MARK on the stack".into()),
            None => Err("stack underflow".into()),
        }
    }
    fn top_obj(&self) -> Result<usize, String> {
        match self.stack.last() {
            Some(Item::Obj(i)) => Ok(*i),
            _ => Err("expected an object on top of the stack".into()),
        }
    }
    fn pop_to_mark(&mut self) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Obj(i)) => out.push(i),
                Some(Item::Mark) => break,
                None => return Err("no MARK on the stack".into()),
            }
        }
        out.reverse();
        Ok(out)
    }
    fn append(&mut self, target: usize, items: Vec<usize>) -> Result<(), String> {
        match &mut self.arena[target] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".into()),
        }
    }
    fn set_items(&mut self, target: usize, items: Vec<usize>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of items for SETITEMS".into());
        }
        match &mut self.arena[target] {
            Node::Dict(v) => {
                for kv in items.chunks_exact(2) {
                    v.push((kv[0], kv[1]));
                }
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }
    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let top = self.top_obj()?;
        self.memo.insert(key, top);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo key {key} not defined"))?;
        self.stack.push(Item::Obj(id));
        Ok(())
    }
    fn str_arg(&mut self, n: usize) -> Result<(), String> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| "string is not valid UTF-8")?
            .to_string();
        self.push_leaf(PickleValue::Str(s));
        Ok(())
    }

    fn run(&mut self) -> Result<usize, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop_obj(),
                b'(' => self.stack.push(Item::Mark),
                b']' => self.push_node(Node::List(Vec::new())),
                b'}' => self.push_node(Node::Dict(Vec::new())),
                b')' => self.push_node(Node::Tuple(Vec::new())),
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.push_node(Node::List(items));
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push_node(Node::Tuple(items));
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    self.push_node(Node::Dict(Vec::new()));
                    let d = self.top_obj()?;
                    self.set_items(d, items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_obj()?);
                    }
                    items.reverse();
                    self.push_node(Node::Tuple(items));
                }
                b'a' => {
                    let v = self.pop_obj()?;
                    let l = self.top_obj()?;
                    self.append(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    let l = self.top_obj()?;
                    self.append(l, items)?;
                }
                b's' => {
                    let v = self.pop_obj()?;
                    let k = self.pop_obj()?;
                    let d = self.top_obj()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    let d = self.top_obj()?;
                    self.set_items(d, items)?;
                }
                b'N' => self.push_leaf(PickleValue::None),
                0x88 => self.push_leaf(PickleValue::Bool(true)),
                0x89 => self.push_leaf(PickleValue::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_leaf(PickleValue::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_leaf(PickleValue::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_leaf(PickleValue::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer too large for i64".into());
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push_leaf(PickleValue::Int(v));
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "00" => PickleValue::Bool(false),
                        "01" => PickleValue::Bool(true),
                        _ => PickleValue::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                    };
                    self.push_leaf(v);
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| format!("bad LONG {s:?}"))?;
                    self.push_leaf(PickleValue::Int(v));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s.parse().map_err(|_| format!("bad FLOAT {s:?}"))?;
                    self.push_leaf(PickleValue::Float(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_leaf(PickleValue::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.str_arg(n)?;
                }
                b'V' => {
                    // Protocol 0/1 str: a raw-unicode-escape line.
                    let rest = &self.data[self.pos..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("unterminated text argument")?;
                    self.pos += n + 1;
                    let s = decode_raw_unicode_escape(&rest[..n])?;
                    self.push_leaf(PickleValue::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.str_arg(n)?;
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string too long")?;
                    self.str_arg(n)?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push_leaf(PickleValue::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push_leaf(PickleValue::Bytes(b));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| format!("bad PUT {s:?}"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| format!("bad GET {s:?}"))?;
                    self.memo_get(k)?;
                }
                b'0' => {
                    self.stack.pop().ok_or("stack underflow")?;
                }
                b'1' => {
                    self.pop_to_mark()?;
                }
                b'2' => {
                    let t = self.top_obj()?;
                    self.stack.push(Item::Obj(t));
                }
                b'c' | 0x93 | b'R' | b'b' | b'i' | b'o' | 0x81 | 0x92 => {
                    return Err(format!(
                        "opcode 0x{op:02x} at byte {at} would construct a Python object (class, numpy \
                         array, ...); only plain lists, dicts, numbers and strings are supported"
                    ));
                }
                _ => return Err(format!("unsupported opcode 0x{op:02x} at byte {at}")),
            }
        }
    }

    fn build(&self, id: usize, depth: usize) -> Result<PickleValue, String> {
        if depth > MAX_DEPTH {
            return Err("nesting too deep (or a self-referencing container)".into());
        }
        Ok(match &self.arena[id] {
            Node::Leaf(v) => v.clone(),
            Node::List(items) => PickleValue::List(
                items
                    .iter()
                    .map(|&i| self.build(i, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Tuple(items) => PickleValue::Tuple(
                items
                    .iter()
                    .map(|&i| self.build(i, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Dict(items) => PickleValue::Dict(
                items
                    .iter()
                    .map(|&(k, v)| Ok((self.build(k, depth + 1)?, self.build(v, depth + 1)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Decodes pickle bytes; the error is a description of the problem.
pub fn parse_pickle(bytes: &[u8]) -> Result<PickleValue, String> {
    let mut vm = Vm {
        data: bytes,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let root = vm.run()?;
    vm.build(root, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_protocol2_list_of_dicts_with_memo() {
        // pickle.dumps([{'a': [1.5, 2], 'b': 'a'}, {'a': None}], protocol=2)
        let mut b = vec![0x80, 2, b']', b'q', 0, b'(', b'}', b'q', 1, b'('];
        b.extend([b'X', 1, 0, 0, 0, b'a', b'q', 2]);
        b.extend([b']', b'q', 3, b'(', b'G']);
        b.extend(1.5f64.to_be_bytes());
        b.extend([b'K', 2, b'e']);
        b.extend([b'X', 1, 0, 0, 0, b'b', b'h', 2, b'u']);
        b.extend([b'}', b'q', 4, b'h', 2, b'N', b's', b'e', b'.']);
        let v = parse_pickle(&b).unwrap();
        let expected = PickleValue::List(vec![
            PickleValue::Dict(vec![
                (
                    PickleValue::Str("a".into()),
                    PickleValue::List(vec![PickleValue::Float(1.5), PickleValue::Int(2)]),
                ),
                (PickleValue::Str("b".into()), PickleValue::Str("a".into())),
            ]),
            PickleValue::Dict(vec![(PickleValue::Str("a".into()), PickleValue::None)]),
        ]);
        assert_eq!(v, expected);
    }

    #[test]
    fn refuses_globals_and_truncation() {
        let e = parse_pickle(b"\x80\x02cnumpy\nndarray\n.").unwrap_err();
        assert!(e.contains("Python object"), "{e}");
        let e = parse_pickle(b"\x80\x02]q").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_pickle(&[0x80, 2, 0x8a, 1, 0xff, b'.']).unwrap();
        assert_eq!(e, PickleValue::Int(-1));
    }
}
