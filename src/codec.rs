//! The gRPC codec of every Skiff service: prost's, except that a message
//! that does not decode (malformed, or nested past prost's recursion
//! limit) is the sender's error, `INVALID_ARGUMENT`, where tonic's codec
//! says `INTERNAL` (which reads as a fault of the server).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The codec build.rs names for the generated clients and servers.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Prost's decoder with the sender blamed for what does not decode.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U> Decoder<U> {
    /// Prost's decoder reports every decode error as `INTERNAL`.
    fn blame(status: Status) -> Status {
        if status.code() != tonic::Code::Internal {
            return status;
        }
        Status::invalid_argument(format!(
            "the message does not decode as {}: {}",
            short_name(std::any::type_name::<U>()),
            status.message()
        ))
    }
}

/// A type's name without its paths: `WatchEvent<Pod>` for
/// `skiff::watch::WatchEvent<skiff::pb::core::v1::Pod>`.
fn short_name(name: &str) -> String {
    match name.split_once('<') {
        Some((outer, inner)) => format!(
            "{}<{}>",
            short_name(outer),
            short_name(inner.strip_suffix('>').unwrap_or(inner))
        ),
        None => name.rsplit("::").next().unwrap_or(name).to_string(),
    }
}

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(Self::blame)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_nested_past_the_recursion_limit_is_an_invalid_argument() {
        // 200 nested google.protobuf.Value lists: field 6 (list_value) of
        // Value, field 1 (values) of ListValue, each a length prefix.
        let mut bytes = Vec::new();
        for _ in 0..200 {
            let mut outer = vec![0x0a];
            prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
            outer.extend_from_slice(&bytes);
            let mut value = vec![0x32];
            prost::encoding::encode_varint(outer.len() as u64, &mut value);
            value.extend_from_slice(&outer);
            bytes = value;
        }
        let err = pbjson_types::Value::decode(bytes.as_slice()).unwrap_err();
        let status = tonic_prost_status(err);
        assert_eq!(status.code(), tonic::Code::Internal, "tonic's own mapping");
        let mapped = Decoder::<pbjson_types::Value>::blame(status);
        assert_eq!(mapped.code(), tonic::Code::InvalidArgument);
        assert!(
            mapped.message().contains("recursion"),
            "{}",
            mapped.message()
        );
    }

    #[test]
    fn a_message_is_named_without_its_paths() {
        assert_eq!(short_name("skiff::pb::core::v1::Pod"), "Pod");
        assert_eq!(
            short_name(std::any::type_name::<crate::pb::core::v1::PodWatchEvent>()),
            "WatchEvent<Pod>"
        );
    }

    fn tonic_prost_status(err: prost::DecodeError) -> Status {
        Status::internal(err.to_string())
    }
}
