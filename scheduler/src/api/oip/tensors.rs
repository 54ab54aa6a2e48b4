//! OIP tensors and the one conversion between them and the payload the
//! agent's worker reads (content type [`CONTENT_TYPE`]): a u32 big-endian
//! header length, a JSON header (`inputs`: name, datatype, shape, byte size
//! of each; `outputs`: the requested names), then each tensor's raw
//! little-endian buffer, BYTES elements each prefixed by its u32 LE length
//! (as Triton's binary tensors). The worker answers in the same form.
//! REST and gRPC build [`Tensor`]s here from raw buffers, JSON `data` or
//! gRPC `contents`, so every check on datatype, shape and size is made once.

use aibro_proto::inference::InferTensorContents;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The content type of a tensor payload between scheduler and worker.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.aibro.tensors";

/// The OIP datatypes served (BF16 is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub(crate) fn parse(name: &str) -> Result<Self> {
        serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
            bad(format!(
                "unknown datatype `{name}`; use BOOL, UINT8, UINT16, UINT32, UINT64, INT8, \
                 INT16, INT32, INT64, FP16, FP32, FP64 or BYTES"
            ))
        })
    }

    pub(crate) fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Bytes per element; None for BYTES (length-prefixed elements).
    fn width(self) -> Option<usize> {
        use DataType::*;
        match self {
            Bool | Uint8 | Int8 => Some(1),
            Uint16 | Int16 | Fp16 => Some(2),
            Uint32 | Int32 | Fp32 => Some(4),
            Uint64 | Int64 | Fp64 => Some(8),
            Bytes => None,
        }
    }
}

/// One tensor, its buffer checked against its datatype and shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// Raw little-endian elements; BYTES elements length-prefixed.
    pub data: Vec<u8>,
}

/// One element on its way into a buffer, from JSON or gRPC contents.
#[derive(Debug, Clone)]
enum Element {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bytes(Vec<u8>),
}

fn bad(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// The number of elements of `shape`: every dimension ≥ 0, no overflow.
fn elements(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| {
            bad(format!(
                "tensor `{name}` has shape {shape:?}: dimensions must be ≥ 0"
            ))
        })?;
        n.checked_mul(d).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has shape {shape:?}, too many elements"
            ))
        })
    })
}

/// The number of length-prefixed elements in a BYTES buffer, if well formed.
fn bytes_elements(mut data: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !data.is_empty() {
        let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        data = data.get(4..)?.get(len..)?;
        n += 1;
    }
    Some(n)
}

impl Tensor {
    /// A tensor from its raw buffer, checked: the buffer holds exactly the
    /// elements the shape says.
    pub(crate) fn raw(name: &str, datatype: &str, shape: Vec<i64>, data: Vec<u8>) -> Result<Self> {
        let datatype = DataType::parse(datatype)?;
        let count = elements(name, &shape)?;
        let fits = match datatype.width() {
            Some(w) => count.checked_mul(w) == Some(data.len()),
            None => bytes_elements(&data) == Some(count),
        };
        if !fits {
            return Err(bad(format!(
                "tensor `{name}` ({}, shape {shape:?}) needs {count} elements; its {} bytes of \
                 data do not hold that many",
                datatype.name(),
                data.len()
            )));
        }
        Ok(Tensor {
            name: name.to_string(),
            datatype,
            shape,
            data,
        })
    }

    /// A tensor from JSON `data`: nested or flat, in row-major order.
    pub(crate) fn json(name: &str, datatype: &str, shape: Vec<i64>, data: &Value) -> Result<Self> {
        let dt = DataType::parse(datatype)?;
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let items = flat
            .into_iter()
            .map(|v| json_element(name, dt, v))
            .collect::<Result<Vec<_>>>()?;
        Self::from_elements(name, dt, shape, items)
    }

    /// A tensor from gRPC's typed `contents`.
    pub(crate) fn contents(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        c: InferTensorContents,
    ) -> Result<Self> {
        use DataType::*;
        let dt = DataType::parse(datatype)?;
        let items: Vec<Element> = match dt {
            Bool => c.bool_contents.into_iter().map(Element::Bool).collect(),
            Int8 | Int16 | Int32 => c
                .int_contents
                .into_iter()
                .map(|v| Element::Int(v.into()))
                .collect(),
            Int64 => c.int64_contents.into_iter().map(Element::Int).collect(),
            Uint8 | Uint16 | Uint32 => c
                .uint_contents
                .into_iter()
                .map(|v| Element::Uint(v.into()))
                .collect(),
            Uint64 => c.uint64_contents.into_iter().map(Element::Uint).collect(),
            Fp32 => c
                .fp32_contents
                .into_iter()
                .map(|v| Element::Float(v.into()))
                .collect(),
            Fp64 => c.fp64_contents.into_iter().map(Element::Float).collect(),
            Bytes => c.bytes_contents.into_iter().map(Element::Bytes).collect(),
            Fp16 => return Err(fp16_raw_only(name)),
        };
        Self::from_elements(name, dt, shape, items)
    }

    fn from_elements(
        name: &str,
        dt: DataType,
        shape: Vec<i64>,
        items: Vec<Element>,
    ) -> Result<Self> {
        let count = elements(name, &shape)?;
        if items.len() != count {
            return Err(bad(format!(
                "tensor `{name}` has shape {shape:?}, {count} elements, but {} data elements",
                items.len()
            )));
        }
        let mut data = Vec::with_capacity(count.saturating_mul(dt.width().unwrap_or(8)));
        for e in items {
            put(name, dt, e, &mut data)?;
        }
        Ok(Tensor {
            name: name.to_string(),
            datatype: dt,
            shape,
            data,
        })
    }

    /// The elements as a flat JSON array (REST without binary data).
    pub(crate) fn to_json(&self) -> Result<Value> {
        use DataType::*;
        let d = &self.data;
        let values: Vec<Value> = match self.datatype {
            Bool => d.iter().map(|b| Value::Bool(*b != 0)).collect(),
            Uint8 => d.iter().map(|b| Value::from(*b)).collect(),
            Int8 => d.iter().map(|b| Value::from(*b as i8)).collect(),
            Uint16 => chunks::<2>(d)
                .map(|c| Value::from(u16::from_le_bytes(c)))
                .collect(),
            Int16 => chunks::<2>(d)
                .map(|c| Value::from(i16::from_le_bytes(c)))
                .collect(),
            Uint32 => chunks::<4>(d)
                .map(|c| Value::from(u32::from_le_bytes(c)))
                .collect(),
            Int32 => chunks::<4>(d)
                .map(|c| Value::from(i32::from_le_bytes(c)))
                .collect(),
            Uint64 => chunks::<8>(d)
                .map(|c| Value::from(u64::from_le_bytes(c)))
                .collect(),
            Int64 => chunks::<8>(d)
                .map(|c| Value::from(i64::from_le_bytes(c)))
                .collect(),
            Fp32 => chunks::<4>(d)
                .map(|c| Value::from(f32::from_le_bytes(c)))
                .collect(),
            Fp64 => chunks::<8>(d)
                .map(|c| Value::from(f64::from_le_bytes(c)))
                .collect(),
            Bytes => byte_strings(d)
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
            Fp16 => {
                return Err(bad(format!(
                    "output `{}` is FP16, which JSON cannot carry: ask for it as binary data",
                    self.name
                )))
            }
        };
        Ok(Value::Array(values))
    }
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

/// The elements of a (checked) BYTES buffer.
fn byte_strings(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let (item, rest) = data.get(4..)?.split_at_checked(len)?;
        data = rest;
        Some(item)
    })
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        v => out.push(v),
    }
}

fn fp16_raw_only(name: &str) -> Error {
    bad(format!(
        "tensor `{name}` is FP16, which only binary data (REST) or raw_input_contents (gRPC) carry"
    ))
}

fn json_element(name: &str, dt: DataType, v: &Value) -> Result<Element> {
    use DataType::*;
    let e = match (dt, v) {
        (Bool, Value::Bool(b)) => Some(Element::Bool(*b)),
        (Int8 | Int16 | Int32 | Int64, Value::Number(n)) => n.as_i64().map(Element::Int),
        (Uint8 | Uint16 | Uint32 | Uint64, Value::Number(n)) => n.as_u64().map(Element::Uint),
        (Fp32 | Fp64, Value::Number(n)) => n.as_f64().map(Element::Float),
        (Bytes, Value::String(s)) => Some(Element::Bytes(s.as_bytes().to_vec())),
        (Fp16, _) => return Err(fp16_raw_only(name)),
        _ => None,
    };
    e.ok_or_else(|| {
        bad(format!(
            "tensor `{name}` is {} but holds the value {v}",
            dt.name()
        ))
    })
}

/// Appends one element, little-endian; values out of the datatype's range fail.
fn put(name: &str, dt: DataType, e: Element, out: &mut Vec<u8>) -> Result<()> {
    use DataType::*;
    let range = |v: &dyn std::fmt::Debug| {
        bad(format!(
            "tensor `{name}` is {} and cannot hold {v:?}",
            dt.name()
        ))
    };
    match (dt, e) {
        (Bool, Element::Bool(b)) => out.push(u8::from(b)),
        (Int8, Element::Int(v)) => {
            out.extend(i8::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Int16, Element::Int(v)) => {
            out.extend(i16::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Int32, Element::Int(v)) => {
            out.extend(i32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Int64, Element::Int(v)) => out.extend(v.to_le_bytes()),
        (Uint8, Element::Uint(v)) => {
            out.extend(u8::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Uint16, Element::Uint(v)) => {
            out.extend(u16::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Uint32, Element::Uint(v)) => {
            out.extend(u32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        (Uint64, Element::Uint(v)) => out.extend(v.to_le_bytes()),
        // FP32 narrows, as numpy does.
        (Fp32, Element::Float(v)) => out.extend((v as f32).to_le_bytes()),
        (Fp64, Element::Float(v)) => out.extend(v.to_le_bytes()),
        (Bytes, Element::Bytes(b)) => {
            let len = u32::try_from(b.len()).map_err(|_| range(&b.len()))?;
            out.extend(len.to_le_bytes());
            out.extend(b);
        }
        (_, e) => return Err(range(&e)),
    }
    Ok(())
}

/// A tensor's description in the worker payload's header.
#[derive(Serialize, Deserialize)]
struct Described {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    size: usize,
}

#[derive(Serialize)]
struct RequestHeader<'a> {
    inputs: Vec<Described>,
    outputs: &'a [String],
}

#[derive(Deserialize)]
struct ReplyHeader {
    outputs: Vec<Described>,
}

fn describe(t: &Tensor) -> Described {
    Described {
        name: t.name.clone(),
        datatype: t.datatype.name(),
        shape: t.shape.clone(),
        size: t.data.len(),
    }
}

/// The worker payload for `inputs`, asking for the `outputs` named (all when empty).
pub(crate) fn encode_request(inputs: Vec<Tensor>, outputs: &[String]) -> Vec<u8> {
    let header = RequestHeader {
        inputs: inputs.iter().map(describe).collect(),
        outputs,
    };
    let header = serde_json::to_vec(&header).expect("a tensor header serialises");
    let total = inputs.iter().map(|t| t.data.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + header.len() + total);
    out.extend((header.len() as u32).to_be_bytes());
    out.extend(header);
    for t in inputs {
        out.extend(t.data);
    }
    out
}

/// The output tensors of a worker's reply, each checked as an input is.
pub(crate) fn decode_reply(body: &[u8]) -> Result<Vec<Tensor>> {
    let broken =
        |why: String| Error::Internal(format!("the model's tensor reply is malformed: {why}"));
    let len = body
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| broken("no header".into()))?;
    let header = body
        .get(4..4 + len)
        .ok_or_else(|| broken("a short header".into()))?;
    let header: ReplyHeader = serde_json::from_slice(header).map_err(|e| broken(e.to_string()))?;
    let mut rest = &body[4 + len..];
    let mut outputs = Vec::with_capacity(header.outputs.len());
    for d in header.outputs {
        let (data, tail) = rest
            .split_at_checked(d.size)
            .ok_or_else(|| broken(format!("output `{}` is cut short", d.name)))?;
        rest = tail;
        let tensor = Tensor::raw(&d.name, &d.datatype, d.shape, data.to_vec())
            .map_err(|e| broken(e.to_string()))?;
        outputs.push(tensor);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_raw_build_the_same_tensor() {
        let raw: Vec<u8> = [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = Tensor::raw("x", "FP32", vec![2, 2], raw).unwrap();
        let b = Tensor::json("x", "FP32", vec![2, 2], &json!([[1, 2], [3, 4]])).unwrap();
        let c = Tensor::json("x", "FP32", vec![2, 2], &json!([1.0, 2.0, 3.0, 4.0])).unwrap();
        assert_eq!((&a, &a), (&b, &c));
        assert_eq!(a.to_json().unwrap(), json!([1.0, 2.0, 3.0, 4.0]));
        let s = Tensor::json("s", "BYTES", vec![2], &json!(["hi", ""])).unwrap();
        assert_eq!(s.data, b"\x02\0\0\0hi\0\0\0\0");
        assert_eq!(s.to_json().unwrap(), json!(["hi", ""]));
    }

    #[test]
    fn bad_tensors_are_refused() {
        let cases = [
            Tensor::json("x", "FLOAT", vec![1], &json!([1])),
            Tensor::json("x", "FP32", vec![3], &json!([1, 2])),
            Tensor::json("x", "FP32", vec![-1], &json!([1])),
            Tensor::json("x", "INT64", vec![i64::MAX, i64::MAX], &json!([1])),
            Tensor::json("x", "INT8", vec![1], &json!([300])),
            Tensor::json("x", "INT32", vec![1], &json!(["a"])),
            Tensor::json("x", "FP16", vec![1], &json!([1.0])),
            Tensor::raw("x", "FP32", vec![2], vec![0; 7]),
            Tensor::raw("x", "BYTES", vec![1], b"\x09\0\0\0ab".to_vec()),
            Tensor::raw("x", "BYTES", vec![2], b"\x01\0\0\0a".to_vec()),
        ];
        for case in cases {
            assert!(matches!(case, Err(Error::InvalidArgument(_))), "{case:?}");
        }
    }

    #[test]
    fn a_worker_payload_round_trips() {
        let x = Tensor::json("x", "INT64", vec![3], &json!([1, -2, 3])).unwrap();
        let body = encode_request(vec![x.clone()], &[]);
        // The reply has the request's form with "outputs" for "inputs".
        let header_len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&body[4..4 + header_len]).unwrap();
        let reply_header = json!({ "outputs": header["inputs"] }).to_string();
        let mut reply = (reply_header.len() as u32).to_be_bytes().to_vec();
        reply.extend(reply_header.as_bytes());
        reply.extend(&body[4 + header_len..]);
        assert_eq!(decode_reply(&reply).unwrap(), vec![x]);
        assert!(decode_reply(&reply[..reply.len() - 1]).is_err());
    }
}
