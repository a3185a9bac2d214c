//! Names the unnamed subgraphs of a serialized ONNX model, so ONNX Runtime accepts it again.
//!
//! Why: Moonshine's decoder ships in ONNX Runtime's `.ort` format with int8 weights that the graph
//! turns into floats (Cast, Add, Mul) on every run — ~130 ms of CPU per decoded token, because
//! ONNX Runtime does not constant-fold `.ort` models at load. Saving the loaded model as ONNX and
//! loading that with full optimisation folds those chains once. The ONNX that ONNX Runtime writes
//! from an `.ort` model leaves the `If` node's branch graphs without a name, which its own
//! checker then refuses ("Field 'name' of 'graph' is required to be non-empty").
//!
//! This walks the protobuf wire format along the only paths that hold graphs (ModelProto.graph,
//! GraphProto.node, NodeProto.attribute, AttributeProto.g / .graphs) and adds a `name` to every
//! GraphProto without one; every other byte is copied unchanged.

/// Why a model could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ONNX protobuf at byte {offset} of a {message}")]
pub struct GraphError {
    pub offset: usize,
    pub message: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
}

impl Message {
    fn name(self) -> &'static str {
        match self {
            Message::Model => "ModelProto",
            Message::Graph => "GraphProto",
            Message::Node => "NodeProto",
            Message::Attribute => "AttributeProto",
        }
    }

    /// The message a length-delimited field holds, where it is one on the way to a graph.
    fn child(self, field: u64) -> Option<Message> {
        match (self, field) {
            (Message::Model, 7) | (Message::Attribute, 6) | (Message::Attribute, 11) => Some(Message::Graph),
            (Message::Graph, 1) => Some(Message::Node),
            (Message::Node, 5) => Some(Message::Attribute),
            _ => None,
        }
    }
}

/// GraphProto's `name` field.
const GRAPH_NAME_FIELD: u64 = 2;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;
/// Deeper nesting than this is not a real model (and would only burn stack).
const MAX_DEPTH: usize = 64;

/// Returns the model with every unnamed graph named `subgraph_N`, and how many were named.
pub fn name_unnamed_graphs(model: &[u8]) -> Result<(Vec<u8>, usize), GraphError> {
    let mut named = 0;
    let out = rewrite(Message::Model, model, 0, 0, &mut named)?;
    Ok((out, named))
}

fn rewrite(msg: Message, bytes: &[u8], base: usize, depth: usize, named: &mut usize) -> Result<Vec<u8>, GraphError> {
    let err = |at: usize| GraphError { offset: base + at, message: msg.name() };
    if depth > MAX_DEPTH {
        return Err(err(0));
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut has_name = false;
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let key = read_varint(bytes, &mut at).ok_or_else(|| err(start))?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            WIRE_VARINT => {
                read_varint(bytes, &mut at).ok_or_else(|| err(start))?;
            }
            WIRE_FIXED64 => at += 8,
            WIRE_FIXED32 => at += 4,
            WIRE_LEN => {
                let len = read_varint(bytes, &mut at).ok_or_else(|| err(start))?;
                let end = usize::try_from(len).ok().and_then(|l| at.checked_add(l)).ok_or_else(|| err(start))?;
                let payload = bytes.get(at..end).ok_or_else(|| err(start))?;
                if msg == Message::Graph && field == GRAPH_NAME_FIELD && !payload.is_empty() {
                    has_name = true;
                }
                if let Some(child) = msg.child(field) {
                    let inner = rewrite(child, payload, base + at, depth + 1, named)?;
                    write_len_field(&mut out, field, &inner);
                    at = end;
                    continue;
                }
                at = end;
            }
            _ => return Err(err(start)),
        }
        out.extend_from_slice(bytes.get(start..at).ok_or_else(|| err(start))?);
    }
    if msg == Message::Graph && !has_name {
        *named += 1;
        write_len_field(&mut out, GRAPH_NAME_FIELD, format!("subgraph_{named}").as_bytes());
    }
    Ok(out)
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_len_field(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    write_varint(out, field << 3 | WIRE_LEN);
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(field: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_len_field(&mut out, field, payload);
        out
    }

    fn varint_field(field: u64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, field << 3 | WIRE_VARINT);
        write_varint(&mut out, value);
        out
    }

    /// ModelProto { ir_version: 8, graph: { name: "main", node: [If { attribute: [then_branch { g:
    /// { node: [] } }, else_branch { g: { name: "kept" } }] }] } }
    fn model_with_if(then_graph: &[u8], else_graph: &[u8]) -> Vec<u8> {
        let then_attr = [len_field(1, b"then_branch"), len_field(6, then_graph)].concat();
        let else_attr = [len_field(1, b"else_branch"), len_field(6, else_graph)].concat();
        let node = [len_field(4, b"If"), len_field(5, &then_attr), len_field(5, &else_attr)].concat();
        let graph = [len_field(1, &node), len_field(2, b"main")].concat();
        [varint_field(1, 8), len_field(7, &graph)].concat()
    }

    #[test]
    fn names_only_the_unnamed_branch_graphs() {
        let unnamed = len_field(5, b"an initializer stays as it is");
        let model = model_with_if(&unnamed, &len_field(2, b"kept"));
        let (out, named) = name_unnamed_graphs(&model).unwrap();
        assert_eq!(named, 1);
        let expected = model_with_if(&[unnamed.clone(), len_field(2, b"subgraph_1")].concat(), &len_field(2, b"kept"));
        assert_eq!(out, expected);
        // Running it again changes nothing: every graph has a name now.
        assert_eq!(name_unnamed_graphs(&out).unwrap(), (out.clone(), 0));
    }

    #[test]
    fn fixed_width_and_varint_fields_are_copied() {
        let graph =
            [varint_field(9, 300), vec![(10 << 3 | 1) as u8], vec![7; 8], vec![(11 << 3 | 5) as u8], vec![1; 4]]
                .concat();
        let model = [varint_field(1, 8), len_field(7, &graph)].concat();
        let (out, named) = name_unnamed_graphs(&model).unwrap();
        assert_eq!(named, 1, "the top graph had no name either");
        assert_eq!(out, [varint_field(1, 8), len_field(7, &[graph, len_field(2, b"subgraph_1")].concat())].concat());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let model = model_with_if(&len_field(2, b"x"), &len_field(2, b"y"));
        for cut in 1..model.len() {
            // Every truncation either still parses (cut at a field boundary) or fails cleanly.
            let _ = name_unnamed_graphs(&model[..cut]);
        }
        assert!(name_unnamed_graphs(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(name_unnamed_graphs(&[(1 << 3 | 3) as u8]).is_err(), "group wire types are not ONNX");
        let mut deep = len_field(2, b"leaf");
        for _ in 0..100 {
            let attr = len_field(6, &deep);
            let node = len_field(5, &attr);
            deep = len_field(1, &node);
        }
        let err = name_unnamed_graphs(&len_field(7, &deep)).unwrap_err();
        assert!(err.to_string().contains("malformed ONNX"), "{err}");
    }
}
