//! Slim records: the few fields volguard needs of each object, so that a large cluster
//! costs megabytes, not gigabytes. Converting drops everything else on arrival.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::Node,
    storage::v1::{CSINode, StorageClass},
};

use super::views::{PvSpecView, PvView, PvcView, VaView};
use crate::model::{
    config::Config,
    drivers::{DriverId, Drivers, VolumeId},
    fast_hash::FastMap,
    per_driver::PerDriver,
    podview::PodView,
    volume::{PodVolume, exclusive, pod_volumes},
};

/// What volguard keeps of a Node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRecord {
    /// Device-plugin volumes advertised on the node, with their allocatable count
    /// (0 = detached: the plugin cannot remove the name).
    pub devices: FastMap<VolumeId, i64>,
    /// Managed volumes in `status.volumesAttached`.
    pub attached: Vec<VolumeId>,
    /// Per-driver limit overrides read from the configured node annotation;
    /// an unparsable value is kept as its text so the reason can quote it.
    pub limit_overrides: Vec<(DriverId, Result<i64, String>)>,
    /// Its `Ready` condition is `True`: only then is a detached device evidence enough to
    /// move its pods (a node in trouble is the node lifecycle controller's business).
    pub ready: bool,
}

/// What volguard keeps of a CSINode: the managed drivers registered there and their count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsiNodeRecord {
    /// Registered managed drivers; `None` count = the driver reports no limit.
    pub drivers: PerDriver<Option<i64>>,
}

/// What volguard keeps of a PersistentVolume.
#[derive(Debug, Clone, PartialEq)]
pub struct PvRecord {
    /// The managed volume it is, `None` for other drivers.
    pub volume: Option<VolumeId>,
    /// ReadWriteOnce or ReadWriteOncePod: one node at a time.
    pub exclusive: bool,
    /// `spec.claimRef` as `namespace/name`: the claim it is bound or reserved to.
    pub claim: Option<String>,
    /// `spec.claimRef.uid`: when set, only that claim (not a later one of the same name).
    pub claim_uid: Option<String>,
    /// Phase Released or Failed: the PV binder binds it to no claim.
    pub released: bool,
}

/// What volguard keeps of a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq)]
pub struct PvcRecord {
    /// `metadata.uid`: a PV's claimRef with a uid names this claim only if it matches.
    pub uid: Option<String>,
    /// The bound PV's name.
    pub volume_name: Option<String>,
    /// The StorageClass, for unbound claims.
    pub storage_class: Option<String>,
    /// ReadWriteOnce or ReadWriteOncePod requested.
    pub exclusive: bool,
    /// The uid of its controlling owner: a generic ephemeral volume's claim belongs to
    /// the pod with this uid only, not to one recreated under the same name.
    pub controller: Option<String>,
}

/// What volguard keeps of a StorageClass.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageClassRecord {
    /// The managed driver that provisions its volumes, `None` for others.
    pub driver: Option<DriverId>,
}

/// A volume a pod uses, as far as it can be known without other objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodVolumeRef {
    /// A claim in the pod's namespace (also a generic ephemeral volume's `<pod>-<volume>`).
    Claim(String),
    /// An inline csi/flexVolume or annotated device of a managed driver.
    Direct(VolumeId),
}

/// What volguard keeps of a Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// The node it is bound to.
    pub node: Option<Arc<str>>,
    /// Succeeded or Failed: it holds no volume any more.
    pub terminal: bool,
    /// Managed (or possibly managed) volumes it uses, without spare capacity (a `Vec`
    /// kept the collect's: about 75 bytes per pod).
    pub uses: Box<[PodVolumeRef]>,
    /// Carries `<prefix>/remediate: "false"`: never evicted by remediation.
    pub remediation_opt_out: bool,
    /// Has a deletion timestamp: already on its way out.
    pub deleting: bool,
    /// `metadata.uid`: remediation evicts the pod it judged, by this uid, and no other;
    /// a placement in flight belongs to this pod, not to one recreated under its name.
    pub uid: Option<String>,
    /// An owner with `controller: true` manages it and recreates it once evicted; a
    /// bare pod is left alone unless `remediation.evictBarePods` (kubectl drain's rule).
    pub controlled: bool,
}

/// What volguard keeps of a VolumeAttachment of a managed attacher.
#[derive(Debug, Clone, PartialEq)]
pub struct VaRecord {
    /// Where the volume is (being) attached.
    pub node: Arc<str>,
    /// The attaching driver.
    pub driver: DriverId,
    /// Which volume.
    pub source: VaSource,
    /// `status.attached`: the attacher reports the volume attached to `node`, evidence
    /// for remediation that the volume is there.
    pub attached: bool,
}

/// The volume a VolumeAttachment names.
#[derive(Debug, Clone, PartialEq)]
pub enum VaSource {
    /// `spec.source.persistentVolumeName`: the handle comes from the PV.
    Pv(String),
    /// `spec.source.inlineVolumeSpec` with its handle.
    Inline(VolumeId),
}

/// Namespaced key `namespace/name`. Built by hand: it is made for every pod and claim
/// loaded and looked up, and `format!` costs several times as much.
pub fn key(namespace: &str, name: &str) -> String {
    let mut k = String::with_capacity(namespace.len() + 1 + name.len());
    k.push_str(namespace);
    k.push('/');
    k.push_str(name);
    k
}

impl NodeRecord {
    /// Slims a Node.
    pub fn from_node(node: &Node, drivers: &Drivers) -> Self {
        let mut rec = NodeRecord::default();
        if let Some(status) = &node.status {
            rec.ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if let Some(alloc) = &status.allocatable {
                for (name, q) in alloc {
                    if let Some(v) = drivers.volume_of_resource(name) {
                        rec.devices.insert(v, parse_count(&q.0).unwrap_or(0));
                    }
                }
            }
            for a in status.volumes_attached.iter().flatten() {
                if let Some(v) = drivers.volume_of_attached_name(&a.name) {
                    rec.attached.push(v);
                }
            }
        }
        if let Some(ann) = &node.metadata.annotations {
            for (id, d) in drivers.iter() {
                let key = d
                    .attach_limit
                    .as_ref()
                    .and_then(|l| l.node_annotation.as_ref());
                if let Some(value) = key.and_then(|k| ann.get(k)) {
                    let parsed = value
                        .trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| value.clone());
                    rec.limit_overrides.push((id, parsed));
                }
            }
        }
        rec
    }
}

/// Reads a Kubernetes quantity ("1", "1500m", "2k", "1Ki", "1e3", ...) as a whole count,
/// rounded toward zero and saturating at the i64 bounds: a device counts as attached at
/// 1 or more however the quantity is written, and one too large for i64 is still more.
/// `None` when the text is no quantity.
pub fn parse_count(q: &str) -> Option<i64> {
    let q = q.trim();
    let (negative, unsigned) = match q.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    let end = unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return None;
    }
    let (mut exp10, exp2) = suffix_exponents(suffix)?;
    // 36 significant digits are kept; further digits of the whole part scale it up.
    let mut mantissa: u128 = 0;
    for (i, digit) in whole.bytes().chain(fraction.bytes()).enumerate() {
        let in_fraction = i >= whole.len();
        if mantissa < 10u128.pow(36) {
            mantissa = mantissa * 10 + u128::from(digit - b'0');
            exp10 -= i64::from(in_fraction);
        } else if !in_fraction {
            exp10 += 1;
        }
    }
    let binary = mantissa.saturating_mul(1 << exp2);
    let scaled = match u32::try_from(-exp10) {
        Err(_) => (0..exp10.min(39)).fold(binary, |v, _| v.saturating_mul(10)),
        Ok(down) => 10u128.checked_pow(down).map_or(0, |d| binary / d),
    };
    let count = i64::try_from(scaled).unwrap_or(i64::MAX);
    Some(if negative { -count } else { count })
}

/// The powers of ten and of two a quantity suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i64, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let size = digits.parse::<i64>().unwrap_or(i64::MAX).min(1_000);
            (
                if exponent.starts_with('-') {
                    -size
                } else {
                    size
                },
                0,
            )
        }
    })
}

impl CsiNodeRecord {
    /// Slims a CSINode to the managed drivers registered on it.
    pub fn from_csinode(csinode: &CSINode, drivers: &Drivers) -> Self {
        let drivers = csinode
            .spec
            .drivers
            .iter()
            .filter_map(|d| {
                let id = drivers.by_csi(&d.name)?;
                let count = d.allocatable.as_ref().and_then(|a| a.count).map(i64::from);
                Some((id, count))
            })
            .collect();
        CsiNodeRecord { drivers }
    }
}

impl PvRecord {
    /// Slims a PersistentVolume. A configured csiDriver or flexDriver names the volume
    /// first (its handle is what attachments and node status report); otherwise the PV's
    /// StorageClass, then its source kind, may select a driver, and the volume is known
    /// by [`pv_identity`].
    pub fn from_pv(pv: &PvView, drivers: &Drivers) -> Self {
        let spec = pv.spec.as_ref();
        let volume = spec.and_then(|s| {
            if let Some(csi) = &s.csi
                && let Some(driver) = drivers.by_csi(&csi.driver)
            {
                return Some(VolumeId {
                    driver,
                    handle: csi.volume_handle.as_str().into(),
                });
            }
            if let Some(flex) = &s.flex_volume
                && let Some(driver) = drivers.by_flex(&flex.driver)
            {
                let id = flex
                    .options
                    .as_ref()?
                    .get(&drivers.get(driver).flex_volume_id_option)?;
                return Some(VolumeId {
                    driver,
                    handle: id.as_str().into(),
                });
            }
            let driver = s
                .storage_class_name
                .as_deref()
                .and_then(|c| drivers.by_class(c))
                .or_else(|| source_kind(s).and_then(|k| drivers.by_kind(k)))?;
            Some(VolumeId {
                driver,
                handle: pv_identity(pv.metadata.name.as_deref().unwrap_or_default(), s).into(),
            })
        });
        PvRecord {
            volume,
            exclusive: exclusive(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
            claim: spec
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| Some(key(c.namespace.as_deref()?, c.name.as_deref()?))),
            claim_uid: spec
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.uid.clone())
                .filter(|u| !u.is_empty()),
            released: matches!(
                pv.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Released" | "Failed")
            ),
        }
    }
}

/// The source kind of a PV, as `sourceKinds` spells it; `None` for kinds volguard does
/// not select by (see [`crate::model::config::SOURCE_KINDS`]).
pub fn source_kind(spec: &PvSpecView) -> Option<&'static str> {
    [
        ("local", spec.local),
        ("nfs", spec.nfs.is_some()),
        ("hostPath", spec.host_path),
        ("iscsi", spec.iscsi),
        ("cephfs", spec.cephfs),
        ("rbd", spec.rbd),
    ]
    .into_iter()
    .find_map(|(kind, set)| set.then_some(kind))
}

/// The identity of a volume that has no CSI handle: `server:path` for NFS, so that two
/// PVs of one export are one volume (for ReadWriteOnce and for counting), else the PV's
/// name, which is unique and stable while the PV exists.
pub fn pv_identity(name: &str, spec: &PvSpecView) -> String {
    match &spec.nfs {
        Some(nfs) => format!("{}:{}", nfs.server, nfs.path),
        None => name.to_owned(),
    }
}

impl PvcRecord {
    /// Slims a PersistentVolumeClaim.
    pub fn from_pvc(pvc: &PvcView) -> Self {
        let spec = pvc.spec.as_ref();
        PvcRecord {
            uid: pvc.metadata.uid.clone().filter(|u| !u.is_empty()),
            volume_name: spec
                .and_then(|s| s.volume_name.clone())
                .filter(|n| !n.is_empty()),
            storage_class: spec
                .and_then(|s| s.storage_class_name.clone())
                .filter(|n| !n.is_empty()),
            exclusive: exclusive(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
            controller: pvc.metadata.controller_uid().map(str::to_owned),
        }
    }
}

impl StorageClassRecord {
    /// Slims a StorageClass.
    pub fn from_storage_class(sc: &StorageClass, drivers: &Drivers) -> Self {
        StorageClassRecord {
            driver: drivers.by_csi(&sc.provisioner),
        }
    }
}

impl PodRecord {
    /// Slims a Pod to its node, phase and possibly-managed volumes (read by
    /// [`pod_volumes`], as the webhook and the extender read them).
    pub fn from_pod(pod: &PodView, drivers: &Drivers, config: &Config) -> Self {
        let uses = pod_volumes(pod, drivers, config)
            .volumes
            .into_iter()
            .filter_map(|v| match v {
                PodVolume::Inline { id, .. } | PodVolume::Device(id) => {
                    Some(PodVolumeRef::Direct(id))
                }
                claimed => claimed.claim().map(|c| PodVolumeRef::Claim(c.to_owned())),
            })
            .collect();
        PodRecord {
            node: pod.node_name().map(Arc::from),
            terminal: pod.is_terminal(),
            uses,
            remediation_opt_out: pod.opts_out(&config.annotation("remediate")),
            deleting: pod
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some()),
            uid: pod.uid().map(str::to_owned),
            controlled: pod.has_controller(),
        }
    }
}

impl VaRecord {
    /// Slims a VolumeAttachment; `None` when another driver attaches it.
    pub fn from_va(va: &VaView, drivers: &Drivers) -> Option<Self> {
        let driver = drivers.by_csi(&va.spec.attacher)?;
        let source = if let Some(pv) = &va.spec.source.persistent_volume_name {
            VaSource::Pv(pv.clone())
        } else {
            let csi = va.spec.source.inline_volume_spec.as_ref()?.csi.as_ref()?;
            VaSource::Inline(VolumeId {
                driver: drivers.by_csi(&csi.driver)?,
                handle: csi.volume_handle.as_str().into(),
            })
        };
        Some(VaRecord {
            node: va.spec.node_name.as_str().into(),
            driver,
            source,
            attached: va.status.as_ref().is_some_and(|s| s.attached),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{PvRecord, parse_count, source_kind};
    use crate::cluster::views::PvView;
    use crate::model::{
        config::{Config, SOURCE_KINDS},
        drivers::Drivers,
    };

    fn pv(spec: serde_json::Value) -> PvView {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "pv-1"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn every_selectable_source_kind_is_recognised_in_a_pv() {
        for kind in SOURCE_KINDS {
            let spec = match kind {
                "local" | "hostPath" => serde_json::json!({kind: {"path": "/mnt/x"}}),
                "nfs" => serde_json::json!({"nfs": {"server": "s", "path": "/e"}}),
                "iscsi" => {
                    serde_json::json!({"iscsi": {"targetPortal": "t", "iqn": "q", "lun": 0}})
                }
                "cephfs" => serde_json::json!({"cephfs": {"monitors": ["m"]}}),
                "rbd" => serde_json::json!({"rbd": {"monitors": ["m"], "image": "i"}}),
                other => panic!("no case for {other}"),
            };
            let pv = pv(spec);
            assert_eq!(source_kind(pv.spec.as_ref().unwrap()), Some(kind));
        }
    }

    #[test]
    fn a_configured_csi_driver_wins_over_class_and_kind_and_identities_are_stable() {
        let config = Config::parse(
            "drivers:\n  - {name: linode, csiDriver: linodebs.csi.linode.com}\n  - {name: local, storageClasses: [local-storage]}\n  - {name: nfs, sourceKinds: [nfs]}\n",
        )
        .unwrap();
        let d = Drivers::new(&config);
        let label = |spec| {
            PvRecord::from_pv(&pv(spec), &d)
                .volume
                .map(|v| format!("{}={}", d.get(v.driver).name, v.handle))
        };
        let csi = serde_json::json!({"storageClassName": "local-storage",
            "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": "310001-x"}});
        assert_eq!(label(csi).as_deref(), Some("linode=310001-x"));
        let other_csi = serde_json::json!({"storageClassName": "local-storage",
            "csi": {"driver": "other.csi", "volumeHandle": "h"}});
        assert_eq!(label(other_csi).as_deref(), Some("local=pv-1"));
        let nfs_in_class = serde_json::json!({"storageClassName": "local-storage",
            "nfs": {"server": "nas", "path": "/e"}});
        assert_eq!(label(nfs_in_class).as_deref(), Some("local=nas:/e"));
        let nfs = serde_json::json!({"nfs": {"server": "nas", "path": "/e"}});
        assert_eq!(label(nfs).as_deref(), Some("nfs=nas:/e"));
        let host_path = serde_json::json!({"hostPath": {"path": "/srv"}});
        assert_eq!(label(host_path), None);
    }

    #[test]
    fn counts_parse_like_quantities() {
        assert_eq!(parse_count("1"), Some(1));
        assert_eq!(parse_count("0"), Some(0));
        assert_eq!(parse_count("2k"), Some(2000));
        assert_eq!(parse_count("1000m"), Some(1));
        assert_eq!(parse_count("-3"), Some(-3));
        assert_eq!(parse_count("x"), None);
        assert_eq!(parse_count("99999999999999Gi"), Some(i64::MAX));
    }

    #[test]
    fn every_quantity_form_is_a_count_and_anything_else_none() {
        let cases = [
            ("+1", Some(1)),
            ("1.5", Some(1)),
            ("0.5", Some(0)),
            ("5.", Some(5)),
            (".5k", Some(500)),
            ("1500m", Some(1)),
            ("999m", Some(0)),
            ("1Ki", Some(1024)),
            ("1.5Ki", Some(1536)),
            ("1e3", Some(1000)),
            ("1E3", Some(1000)),
            ("1e+3", Some(1000)),
            ("1e-3", Some(0)),
            ("-1e3", Some(-1000)),
            ("2E", Some(2_000_000_000_000_000_000)),
            ("3T", Some(3_000_000_000_000)),
            ("1Pi", Some(1 << 50)),
            ("8Ei", Some(i64::MAX)),
            ("9223372036854775807", Some(i64::MAX)),
            ("1234567890123456789", Some(1_234_567_890_123_456_789)),
            ("99999999999999999999", Some(i64::MAX)),
            ("-99999999999999999999", Some(-i64::MAX)),
            ("1e400", Some(i64::MAX)),
            ("1e99999999999999999999", Some(i64::MAX)),
            ("1e-99999999999999999999", Some(0)),
            ("0e400", Some(0)),
            ("", None),
            ("-", None),
            ("--1", None),
            ("1x", None),
            ("e3", None),
            ("1e", None),
            ("1e3.5", None),
            ("1.2.3", None),
            ("1 k", None),
            ("1kk", None),
        ];
        for (q, want) in cases {
            assert_eq!(parse_count(q), want, "{q:?}");
        }
    }
}
