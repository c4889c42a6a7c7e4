//! Buffers of the HTTP front end that hold shares or cipherTexts, wiped when dropped: the
//! request body and the object parsed from it, and the answer's body once sent. (Copies made
//! by hyper's own connection buffers are not ours to wipe.)

use axum::body::{Body, Bytes};
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

/// A request body, taken over without a copy when nothing else holds it, and wiped on drop.
pub fn body(bytes: Bytes) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Vec::from(bytes))
}

/// A response body that wipes its bytes once hyper has sent and dropped them.
pub fn response_body(bytes: Vec<u8>) -> Body {
    Body::from(Bytes::from_owner(Zeroizing::new(bytes)))
}

/// A JSON object parsed from a request; every string in it is wiped on drop.
pub struct Object(pub Map<String, Value>);

impl std::ops::Deref for Object {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Object {
    /// Wipes every string of the object (keys are field names, not secrets).
    fn wipe(&mut self) {
        fn wipe(value: &mut Value) {
            match value {
                Value::String(s) => s.zeroize(),
                Value::Array(items) => items.iter_mut().for_each(wipe),
                Value::Object(map) => map.values_mut().for_each(wipe),
                _ => {}
            }
        }
        self.0.values_mut().for_each(wipe);
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// An `io::Write` into a buffer that is wiped on drop, and whose every outgrown allocation is
/// wiped too (a plain `Vec` leaves its old allocation behind when it grows).
#[derive(Default)]
pub struct Buffer(pub Zeroizing<Vec<u8>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.capacity() - self.0.len() < buf.len() {
            let want = (self.0.len() + buf.len())
                .max(2 * self.0.capacity())
                .max(256);
            let mut grown = Zeroizing::new(Vec::with_capacity(want));
            grown.extend_from_slice(&self.0);
            // The outgrown allocation is wiped as it drops.
            self.0 = grown;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as JSON, in a [`Buffer`]; the bytes to answer with.
pub fn to_json(value: &impl serde::Serialize) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut out = Buffer::default();
    serde_json::to_writer(&mut out, value)?;
    Ok(out.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_parsed_object_wipes_its_strings() {
        let parsed =
            super::super::parse_object(br#"{"share":"SECRET","n":[{"c":"SECRET"}]}"#).unwrap();
        let mut object = Object(parsed.clone());
        assert_eq!(object.get("share"), parsed.get("share"));
        // What the drop does, seen on the object before it goes.
        object.wipe();
        let wiped = serde_json::to_string(&object.0).unwrap();
        assert!(!wiped.contains("SECRET"), "{wiped}");
        assert!(wiped.contains(r#""share":"""#), "{wiped}");
    }

    #[test]
    fn the_buffer_writes_what_serde_json_writes() {
        let value = serde_json::json!({"cipherText": "x\"y".repeat(1000), "n": 1});
        let out = to_json(&value).unwrap();
        assert_eq!(
            out.as_slice(),
            serde_json::to_vec(&value).unwrap().as_slice()
        );
    }

    #[tokio::test]
    async fn a_response_body_carries_its_bytes() {
        let body = response_body(b"{\"a\":1}".to_vec());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");
    }
}
