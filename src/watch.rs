//! The watch event of every kind (`PodWatchEvent` is `WatchEvent<Pod>`).
//!
//! On the wire it is the message build.rs declares per kind
//! (`EventType type = 1; Pod object = 2;`), so any gRPC client decodes it
//! from the descriptor. In Rust it is written by hand, not generated, for
//! one reason: a server fanning one change out to thousands of watchers
//! encodes the object once and hands every watcher the same bytes
//! ([`WatchEvent::encoded`]), which are written where the object would be.
//! A message field and a bytes field are both length-delimited on the
//! wire, so the receiver cannot tell the difference.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use crate::pb::api::v1::EventType;

/// One change as streamed by a kind's Watch. (Equality compares the
/// fields as they are: an event built with [`Self::encoded`] equals only
/// another built from the same bytes, not the event decoded from them.)
#[derive(Clone, PartialEq, Default)]
pub struct WatchEvent<K> {
    /// The [`EventType`], as its number (an unknown number stays as sent).
    pub r#type: i32,
    /// The object; unset in an event built from [`Self::encoded`].
    pub object: Option<K>,
    /// The object already encoded, written in its place. Set only by
    /// senders; decoding always fills `object`.
    encoded: Option<Bytes>,
}

impl<K> WatchEvent<K> {
    /// An event carrying `object`.
    pub fn new(kind: EventType, object: K) -> Self {
        Self {
            r#type: kind as i32,
            object: Some(object),
            encoded: None,
        }
    }

    /// An event whose object is already encoded (`object.encode_to_vec()`
    /// of a `K`): sending it copies the bytes, nothing is encoded again.
    pub fn encoded(kind: EventType, object: Bytes) -> Self {
        Self {
            r#type: kind as i32,
            object: None,
            encoded: Some(object),
        }
    }

    /// The event type; an unknown number reads as `Unspecified`.
    pub fn r#type(&self) -> EventType {
        EventType::try_from(self.r#type).unwrap_or(EventType::Unspecified)
    }
}

impl<K: prost::Message + Default> prost::Message for WatchEvent<K> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            encoding::int32::encode(1, &self.r#type, buf);
        }
        match (&self.encoded, &self.object) {
            (Some(bytes), _) => encoding::bytes::encode(2, bytes, buf),
            (None, Some(object)) => encoding::message::encode(2, object, buf),
            (None, None) => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => encoding::int32::merge(wire_type, &mut self.r#type, buf, ctx),
            2 => {
                // Bytes sent in place of the object would now be stale.
                self.encoded = None;
                encoding::message::merge(
                    wire_type,
                    self.object.get_or_insert_with(K::default),
                    buf,
                    ctx,
                )
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let kind = if self.r#type == 0 {
            0
        } else {
            encoding::int32::encoded_len(1, &self.r#type)
        };
        kind + match (&self.encoded, &self.object) {
            (Some(bytes), _) => encoding::bytes::encoded_len(2, bytes),
            (None, Some(object)) => encoding::message::encoded_len(2, object),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.r#type = 0;
        self.object = None;
        self.encoded = None;
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for WatchEvent<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("WatchEvent");
        out.field("type", &self.r#type());
        match &self.encoded {
            Some(bytes) => out.field("encoded_object_bytes", &bytes.len()),
            None => out.field("object", &self.object),
        };
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb::core::v1::ConfigMap;
    use crate::pb::meta::v1::ObjectMeta;

    fn object() -> ConfigMap {
        ConfigMap {
            metadata: Some(ObjectMeta {
                name: "cm".into(),
                resource_version: "7".into(),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_event_sent_with_its_object_already_encoded_reads_as_the_object() {
        let object = object();
        let plain = WatchEvent::new(EventType::Modified, object.clone());
        let shared = WatchEvent::<ConfigMap>::encoded(
            EventType::Modified,
            Bytes::from(object.encode_to_vec()),
        );
        assert_eq!(shared.encoded_len(), plain.encoded_len());
        assert_eq!(shared.encode_to_vec(), plain.encode_to_vec());
        let read = WatchEvent::<ConfigMap>::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read, plain, "decoding fills the object, never `encoded`");
        assert_eq!(read.r#type(), EventType::Modified);
    }

    #[test]
    fn a_watch_event_is_the_message_the_descriptor_declares() {
        // Field 1 a varint (the type), field 2 length-delimited (the
        // object): what every other gRPC client decodes from the
        // descriptor build.rs writes.
        let bytes = WatchEvent::new(EventType::Deleted, object()).encode_to_vec();
        assert_eq!(bytes[0], 1 << 3);
        assert_eq!(bytes[1], EventType::Deleted as u8);
        assert_eq!(bytes[2], (2 << 3) | 2);
        let mut unknown = bytes.clone();
        // An unknown field (9, varint 1) is skipped, not an error.
        unknown.extend_from_slice(&[9 << 3, 1]);
        let read = WatchEvent::<ConfigMap>::decode(unknown.as_slice()).unwrap();
        assert_eq!(read.object, Some(object()));
        let empty = WatchEvent::<ConfigMap>::default();
        assert_eq!(empty.encoded_len(), 0);
        assert_eq!(empty.r#type(), EventType::Unspecified);
    }
}
