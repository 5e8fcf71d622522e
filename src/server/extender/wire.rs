//! kube-scheduler's extender wire format (`k8s.io/kube-scheduler/extender/v1`). The Go
//! structs have no json tags, so every key is the PascalCase field name; serde matches
//! keys exactly, hence the explicit renames. Node objects are kept as raw JSON so that
//! the `Nodes` answer echoes them byte for byte, fields volguard does not know included.

use std::borrow::Cow;

use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use serde_json::value::RawValue;

use crate::model::podview::PodView;

/// The body of `POST /filter` and `POST /prioritize`.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs<'a> {
    /// The pod being scheduled.
    #[serde(
        rename = "Pod",
        default,
        deserialize_with = "crate::model::json_shape::object_or_null"
    )]
    pub pod: Option<Box<PodView>>,
    /// Candidate nodes as full objects (`nodeCacheCapable: false`).
    #[serde(
        rename = "Nodes",
        borrow,
        default,
        deserialize_with = "crate::model::json_shape::object_or_null"
    )]
    pub nodes: Option<NodeList<'a>>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(rename = "NodeNames", borrow, default)]
    pub node_names: Option<Vec<NodeName<'a>>>,
}

/// A node name, borrowed from the request body unless it had to be unescaped.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeName<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// A `v1.NodeList` whose items stay raw JSON, to be echoed back unchanged.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeList<'a> {
    /// `TypeMeta.apiVersion`, rarely set by the scheduler.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// `TypeMeta.kind`, rarely set by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `ListMeta`, echoed as received.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
    /// The Node objects.
    #[serde(borrow, default)]
    pub items: Vec<&'a RawValue>,
}

/// Just enough of a Node to know its name.
#[derive(Deserialize)]
struct NamedObject<'a> {
    #[serde(borrow, default)]
    metadata: NamedMeta<'a>,
}

#[derive(Default, Deserialize)]
struct NamedMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// Reads `metadata.name` of a raw Node; the message names the item when it is missing.
pub fn node_name<'a>(item: &'a RawValue, index: usize) -> Result<Cow<'a, str>, String> {
    let named: NamedObject<'a> = serde_json::from_str(item.get())
        .map_err(|e| format!("Nodes.items[{index}] is not a Node: {e}"))?;
    named
        .metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("Nodes.items[{index}] has no metadata.name"))
}

/// Reasons by node name, as the Go `FailedNodesMap`, in the order the nodes were
/// added. Thousands of nodes usually share a handful of reasons: each distinct reason is
/// JSON-encoded once per answer, not once per node.
#[derive(Debug, Default)]
pub struct FailedNodesMap<'a> {
    /// Node name and the index of its reason; names are unique (callers dedupe).
    entries: Vec<(&'a str, usize)>,
    reasons: Vec<&'a str>,
}

impl<'a> FailedNodesMap<'a> {
    /// Records why `node` fails. Nodes failing for the same reason share its entry,
    /// found by address first (the judge shares one string per cause), then by text.
    pub fn insert(&mut self, node: &'a str, reason: &'a str) {
        let index = match self
            .reasons
            .iter()
            .position(|r| std::ptr::eq(*r, reason) || *r == reason)
        {
            Some(i) => i,
            None => {
                self.reasons.push(reason);
                self.reasons.len() - 1
            }
        };
        self.entries.push((node, index));
    }
}

impl Serialize for FailedNodesMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let encoded: Vec<Box<RawValue>> = self
            .reasons
            .iter()
            .map(|r| serde_json::value::to_raw_value(r).map_err(S::Error::custom))
            .collect::<Result<_, _>>()?;
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (node, reason) in &self.entries {
            map.serialize_entry(node, &encoded[*reason])?;
        }
        map.end()
    }
}

/// The answer to `POST /filter`. Every key is always present, as Go encodes it.
#[derive(Debug, Default, Serialize)]
pub struct ExtenderFilterResult<'a> {
    /// Passing nodes as full objects, when they were sent as such.
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeList<'a>>,
    /// Passing node names, when names were sent.
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<&'a str>>,
    /// Nodes that fail for a reason preemption can remove.
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: FailedNodesMap<'a>,
    /// Nodes that fail for a reason preemption cannot remove.
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: FailedNodesMap<'a>,
    /// Non-empty: volguard could not judge; the scheduler fails this attempt and retries.
    #[serde(rename = "Error")]
    pub error: String,
}

impl ExtenderFilterResult<'_> {
    /// The answer when volguard cannot judge at all: no verdict, only the reason.
    pub fn error(reason: String) -> Self {
        ExtenderFilterResult {
            error: reason,
            ..Default::default()
        }
    }
}

/// One entry of the `HostPriorityList` answered by `POST /prioritize`.
#[derive(Debug, Serialize)]
pub struct HostPriority<'a> {
    /// The node name.
    #[serde(rename = "Host")]
    pub host: &'a str,
    /// 0..=10 (`MaxExtenderPriority`).
    #[serde(rename = "Score")]
    pub score: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_nodes_keep_their_order_and_share_an_escaped_reason() {
        let shared = String::from(r#"claim "data" in use on node-a"#);
        let copy = shared.clone();
        let mut map = FailedNodesMap::default();
        map.insert("node-c", &shared);
        map.insert("node-a", "at the limit");
        map.insert("node-b", &copy);
        assert_eq!(map.reasons.len(), 2, "equal texts share one entry");
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"node-c":"claim \"data\" in use on node-a","node-a":"at the limit","node-b":"claim \"data\" in use on node-a"}"#
        );
    }

    #[test]
    fn upstream_compatibility_shapes_decode_and_encode() {
        // The shapes pinned by kube-scheduler's extender/v1 compatibility test.
        let body = r#"{"Pod":{"metadata":{"name":"p"}},"Nodes":{"items":[{"metadata":{"name":"node1"}}]},"NodeNames":["node1"]}"#;
        let args: ExtenderArgs = serde_json::from_str(body).unwrap();
        assert_eq!(args.pod.unwrap().name(), "p");
        let nodes = args.nodes.unwrap();
        assert_eq!(node_name(nodes.items[0], 0).unwrap(), "node1");
        assert_eq!(args.node_names.unwrap()[0].0, "node1");

        let mut result = ExtenderFilterResult::error("myerror".into());
        result.failed_nodes.insert("foo", "bar");
        result.failed_and_unresolvable_nodes.insert("baz", "qux");
        assert_eq!(
            serde_json::to_string(&result).unwrap(),
            r#"{"Nodes":null,"NodeNames":null,"FailedNodes":{"foo":"bar"},"FailedAndUnresolvableNodes":{"baz":"qux"},"Error":"myerror"}"#
        );
        let list = [HostPriority {
            host: "myhost",
            score: 1,
        }];
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"[{"Host":"myhost","Score":1}]"#
        );
    }

    #[test]
    fn a_node_list_is_an_object_not_an_array_of_its_fields() {
        let args: ExtenderArgs =
            serde_json::from_str(r#"{"Nodes": {"items": [{"metadata": {"name": "n"}}]}}"#).unwrap();
        assert_eq!(node_name(args.nodes.unwrap().items[0], 0).unwrap(), "n");
        let args: ExtenderArgs = serde_json::from_str(r#"{"Nodes": null}"#).unwrap();
        assert!(args.nodes.is_none());
        for array in [
            r#"{"Nodes": [null, null]}"#,
            r#"{"Nodes": ["v1", "NodeList", {}, []]}"#,
        ] {
            let e = serde_json::from_str::<ExtenderArgs>(array).unwrap_err();
            assert!(e.to_string().contains("expected an object"), "{e}");
        }
    }

    #[test]
    fn escaped_names_are_unescaped_and_nameless_nodes_named_by_index() {
        let args: ExtenderArgs =
            serde_json::from_str(r#"{"NodeNames":["a\u002db"],"Nodes":{"items":[{}]}}"#).unwrap();
        assert_eq!(args.node_names.unwrap()[0].0, "a-b");
        let e = node_name(args.nodes.unwrap().items[0], 0).unwrap_err();
        assert_eq!(e, "Nodes.items[0] has no metadata.name");
    }
}
