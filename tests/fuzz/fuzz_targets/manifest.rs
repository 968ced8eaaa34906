//! Manifests as `skiff apply` reads them: any bytes, as YAML or JSON,
//! multi-document, each checked against its kind's schema; and the proto3
//! JSON form of objects (what grpcurl and the API's JSON speak). Nothing
//! may panic; whatever is accepted must survive a round trip through the
//! wire format.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::pb::apps::v1::Deployment;
use skiff::pb::core::v1::{Pod, Service};

/// Decodes `data` as `K`'s JSON; an accepted object encodes, decodes and
/// re-serializes to the same value.
fn json_round_trip<K>(data: &[u8])
where
    K: prost::Message + Default + PartialEq + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    if let Ok(obj) = serde_json::from_slice::<K>(data) {
        let wire = obj.encode_to_vec();
        let back = K::decode(wire.as_slice()).expect("what was encoded decodes");
        assert_eq!(back, obj);
        let json = serde_json::to_vec(&obj).expect("an object serializes");
        let again: K = serde_json::from_slice(&json).expect("its own JSON reads back");
        assert_eq!(again, obj);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (mut documents, mut errors) = (Vec::new(), Vec::new());
    skiff_ctl::manifest::parse("fuzz.yaml", &text, &mut documents, &mut errors);
    for document in &documents {
        let _ = document.name();
        let _ = document.origin();
    }
    for error in &errors {
        let _ = error.to_string();
    }
    json_round_trip::<Pod>(data);
    json_round_trip::<Deployment>(data);
    json_round_trip::<Service>(data);
});
