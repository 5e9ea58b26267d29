//! Prometheus remote-write 1.0: a snappy-compressed (block format, not framed) protobuf
//! `prometheus.WriteRequest`.
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; repeated MetricMetadata metadata = 3; }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
//!                        repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms
//! ```
//!
//! The messages are hand-written [`prost`] structs in [`proto`] (no `protoc` at build time).
//! Native histograms and exemplars are decoded only far enough to be counted
//! ([`RemoteWrite::skipped_histograms`], [`RemoteWrite::skipped_exemplars`]); metadata is
//! ignored. None of them fail the request.
//!
//! Bounds and failure modes:
//! - The decompressed size announced in the snappy header is checked against the caller's
//!   `max_decompressed_bytes` **before** anything is allocated ([`DecodeError::TooLarge`]).
//! - The request is decoded one `TimeSeries` at a time, so the intermediate protobuf structs
//!   never hold more than one series; the output holds one [`Sample`] (with its own copy of the
//!   key) per sample, so callers should size `max_decompressed_bytes` with that in mind.
//! - Whole-request errors ([`DecodeError`]): bad snappy, bad protobuf (including a label that
//!   is not UTF-8: protobuf strings must be), too large.
//! - Per-series rejections ([`LineError`], `line` = the series' 1-based position): no
//!   `__name__` label, an empty or oversized name or label, duplicate labels, too many labels.
//!   The rest of the request is kept.
//! - Label names are not checked against Prometheus' classic `[a-zA-Z_][a-zA-Z0-9_]*`: Prometheus
//!   3 allows any UTF-8, and Roaster's names are arbitrary UTF-8.

use model::Label;
use prost::Message as _;

use crate::{DecodeError, LineError, Reason, Rejection, Sample, WireLimits, series_key};

/// The protobuf messages of remote-write 1.0, hand-written for `prost`.
pub mod proto {
    /// The request body (after snappy).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// The series and their samples.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        /// Metric metadata (type, help, unit); ignored by the decoder.
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }

    /// One series and its samples.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// The labels, `__name__` included; senders sort them by name.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// The samples, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        /// Exemplars: counted and skipped.
        #[prost(message, repeated, tag = "3")]
        pub exemplars: Vec<Exemplar>,
        /// Native histograms: counted and skipped.
        #[prost(message, repeated, tag = "4")]
        pub histograms: Vec<Histogram>,
    }

    /// One label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// The label name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// The label value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// One sample.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Sample {
        /// The value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// UTC milliseconds.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    /// An exemplar (only its presence matters here).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exemplar {
        /// The exemplar's labels (e.g. a trace id).
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// The exemplar's value.
        #[prost(double, tag = "2")]
        pub value: f64,
        /// UTC milliseconds.
        #[prost(int64, tag = "3")]
        pub timestamp: i64,
    }

    /// A native histogram: its fields are skipped unread, only its presence is counted.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Histogram {}

    /// Metric metadata.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricMetadata {
        /// The metric type (an enum in Prometheus' proto).
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        /// The metric family name.
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        /// The help text.
        #[prost(string, tag = "4")]
        pub help: String,
        /// The unit.
        #[prost(string, tag = "5")]
        pub unit: String,
    }
}

/// What a remote-write request decoded to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteWrite {
    /// Every sample of every accepted series, in request order; timestamps are always `Some`.
    pub samples: Vec<Sample>,
    /// One error per rejected series.
    pub errors: Vec<LineError>,
    /// Native histogram samples skipped (not stored by Roaster).
    pub skipped_histograms: usize,
    /// Exemplars skipped.
    pub skipped_exemplars: usize,
}

/// Decodes a snappy-compressed `WriteRequest`, refusing bodies that decompress to more than
/// `max_decompressed_bytes`.
pub fn decode(
    body: &[u8],
    max_decompressed_bytes: usize,
    limits: &WireLimits,
) -> Result<RemoteWrite, DecodeError> {
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > max_decompressed_bytes {
        return Err(DecodeError::TooLarge {
            len,
            limit: max_decompressed_bytes,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    decode_uncompressed(&raw, limits)
}

/// Decodes an uncompressed `WriteRequest` protobuf, one series at a time.
pub fn decode_uncompressed(mut buf: &[u8], limits: &WireLimits) -> Result<RemoteWrite, DecodeError> {
    let mut out = RemoteWrite::default();
    let mut index = 0usize;
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let field = key >> 3;
        match (key & 7, field) {
            (_, 0) => return Err(DecodeError::Protobuf("field number 0".into())),
            (2, _) => {
                let len = usize::try_from(read_varint(&mut buf)?)
                    .map_err(|_| DecodeError::Protobuf("length overflows".into()))?;
                let Some((payload, rest)) = buf.split_at_checked(len) else {
                    return Err(DecodeError::Protobuf("truncated message".into()));
                };
                buf = rest;
                if field == 1 {
                    index += 1;
                    let series = proto::TimeSeries::decode(payload)
                        .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
                    convert(series, index, limits, &mut out);
                }
            }
            (0, _) => {
                read_varint(&mut buf)?;
            }
            (1, _) => buf = skip(buf, 8)?,
            (5, _) => buf = skip(buf, 4)?,
            (wire_type, _) => {
                return Err(DecodeError::Protobuf(format!(
                    "unsupported wire type {wire_type}"
                )));
            }
        }
    }
    Ok(out)
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], DecodeError> {
    buf.get(n..)
        .ok_or_else(|| DecodeError::Protobuf("truncated fixed-width field".into()))
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(DecodeError::Protobuf("truncated varint".into()));
        };
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError::Protobuf("varint longer than 10 bytes".into()))
}

fn convert(series: proto::TimeSeries, index: usize, limits: &WireLimits, out: &mut RemoteWrite) {
    out.skipped_histograms += series.histograms.len();
    out.skipped_exemplars += series.exemplars.len();
    let mut name = None;
    let mut labels = Vec::with_capacity(series.labels.len());
    for l in &series.labels {
        if l.name == model::METRIC_NAME_LABEL {
            if name.is_some() {
                out.errors.push(reject(
                    &series,
                    index,
                    Reason::BadName,
                    "__name__ appears more than once",
                ));
                return;
            }
            name = Some(l.value.clone());
        } else {
            labels.push(Label::new(l.name.clone(), l.value.clone()));
        }
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        out.errors.push(reject(
            &series,
            index,
            Reason::BadName,
            "series has no __name__ label",
        ));
        return;
    };
    match series_key(name, labels, limits) {
        Ok(key) => out.samples.extend(series.samples.iter().map(|s| Sample {
            key: key.clone(),
            timestamp_ms: Some(s.timestamp),
            value: s.value,
        })),
        Err(r) => out.errors.push(reject(&series, index, r.reason, r.detail)),
    }
}

/// A rejection whose excerpt renders the series' labels as `{a="1",b="2"}`.
fn reject(series: &proto::TimeSeries, index: usize, reason: Reason, detail: impl Into<String>) -> LineError {
    let mut text = String::from("{");
    for (i, l) in series.labels.iter().enumerate() {
        if text.len() > crate::EXCERPT_MAX_BYTES {
            break;
        }
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("{}={:?}", l.name, l.value));
    }
    text.push('}');
    Rejection::new(reason, detail).at(index, text.as_bytes())
}

/// Builds a request from samples, one `TimeSeries` per run of consecutive samples with the
/// same key (`__name__` first, then the labels). A `None` timestamp is written as 0.
pub fn write_request(samples: &[Sample]) -> proto::WriteRequest {
    let mut req = proto::WriteRequest::default();
    for s in samples {
        let sample = proto::Sample {
            value: s.value,
            timestamp: s.timestamp_ms.unwrap_or(0),
        };
        if let Some(last) = req.timeseries.last_mut()
            && same_key(&last.labels, &s.key)
        {
            last.samples.push(sample);
            continue;
        }
        let mut labels = vec![proto::Label {
            name: model::METRIC_NAME_LABEL.to_owned(),
            value: s.key.name().to_owned(),
        }];
        labels.extend(s.key.labels().iter().map(|l| proto::Label {
            name: l.name.clone(),
            value: l.value.clone(),
        }));
        req.timeseries.push(proto::TimeSeries {
            labels,
            samples: vec![sample],
            ..Default::default()
        });
    }
    req
}

fn same_key(labels: &[proto::Label], key: &model::SeriesKey) -> bool {
    labels.len() == key.labels().len() + 1
        && labels.first().is_some_and(|l| l.value == key.name())
        && labels
            .iter()
            .skip(1)
            .zip(key.labels())
            .all(|(a, b)| a.name == b.name && a.value == b.value)
}

/// Encodes a request as a remote-write body: protobuf, then snappy block format. For tests,
/// benchmarks and clients. `-0.0` is written as `0.0` (prost omits proto3 default values).
/// Fails only when the protobuf exceeds snappy's maximum input size.
pub fn encode(req: &proto::WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use model::SeriesKey;

    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> proto::TimeSeries {
        proto::TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| proto::Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| proto::Sample { value, timestamp })
                .collect(),
            ..Default::default()
        }
    }

    fn decode_series(ts: Vec<proto::TimeSeries>, limits: &WireLimits) -> RemoteWrite {
        let body = encode(&proto::WriteRequest {
            timeseries: ts,
            metadata: vec![],
        })
        .unwrap();
        decode(&body, 1 << 20, limits).unwrap()
    }

    #[test]
    fn series_are_accepted_or_rejected_alone() {
        let tight = WireLimits {
            max_labels: 2,
            ..WireLimits::default()
        };
        let long = "x".repeat(5000);
        // (labels, expected key or error reason)
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, Reason>);
        let cases: &[Case] = &[
            (&[("__name__", "up"), ("job", "a")], Ok(r#"up{job="a"}"#)),
            (&[("job", "a"), ("__name__", "up")], Ok(r#"up{job="a"}"#)),
            (&[("__name__", "a.b"), ("x", "")], Ok(r#"{"a.b"}"#)),
            (&[("job", "a")], Err(Reason::BadName)),
            (&[("__name__", "")], Err(Reason::BadName)),
            (&[("__name__", "a"), ("__name__", "b")], Err(Reason::BadName)),
            (&[("__name__", "a"), ("", "v")], Err(Reason::BadLabel)),
            (
                &[("__name__", "a"), ("k", "1"), ("k", "2")],
                Err(Reason::BadLabel),
            ),
            (&[("__name__", "a"), ("k", &long)], Err(Reason::BadLabel)),
            (
                &[("__name__", "a"), ("a", "1"), ("b", "2"), ("c", "3")],
                Err(Reason::TooManyLabels),
            ),
        ];
        for (labels, want) in cases {
            let got = decode_series(vec![series(labels, &[(1000, 1.5)])], &tight);
            match want {
                Ok(key) => {
                    assert_eq!(got.errors, vec![], "{labels:?}");
                    assert_eq!(got.samples.len(), 1);
                    assert_eq!(got.samples[0].key.to_string(), *key);
                    assert_eq!(got.samples[0].timestamp_ms, Some(1000));
                }
                Err(reason) => {
                    assert!(got.samples.is_empty(), "{labels:?}");
                    assert_eq!(got.errors.len(), 1);
                    assert_eq!(got.errors[0].reason, *reason, "{labels:?}");
                    assert_eq!(got.errors[0].line, 1);
                }
            }
        }
        let mixed = decode_series(
            vec![
                series(&[("__name__", "a")], &[(1, 1.0), (2, 2.0)]),
                series(&[("job", "x")], &[(1, 1.0)]),
                series(&[("__name__", "b")], &[(3, f64::NAN)]),
            ],
            &tight,
        );
        assert_eq!(mixed.samples.len(), 3);
        assert!(mixed.samples[2].value.is_nan());
        assert_eq!(mixed.errors.len(), 1);
        assert_eq!(mixed.errors[0].line, 2);
        assert_eq!(mixed.errors[0].excerpt, r#"{job="x"}"#);
    }

    #[test]
    fn histograms_and_exemplars_are_counted_not_failed() {
        let mut ts = series(&[("__name__", "h")], &[(5, 1.0)]);
        ts.histograms = vec![proto::Histogram {}, proto::Histogram {}];
        ts.exemplars = vec![proto::Exemplar {
            labels: vec![],
            value: 1.0,
            timestamp: 5,
        }];
        let only_hist = proto::TimeSeries {
            histograms: vec![proto::Histogram {}],
            ..series(&[("__name__", "h2")], &[])
        };
        let got = decode_series(vec![ts, only_hist], &WireLimits::default());
        assert_eq!(got.samples.len(), 1);
        assert_eq!(got.skipped_histograms, 3);
        assert_eq!(got.skipped_exemplars, 1);
        assert!(got.errors.is_empty());
    }

    #[test]
    fn real_histogram_fields_are_skipped() {
        // a TimeSeries with a histogram carrying fields (count_int=1 varint, sum=3 double,
        // schema=4 sint32, positive_spans=11 message): the empty Histogram struct skips them
        let hist: &[u8] = &[
            0x08, 0x05, 0x19, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x20, 0x06, 0x5a, 0x02, 0x08, 0x01,
        ];
        let mut ts = series(&[("__name__", "h")], &[]).encode_to_vec();
        ts.push(0x22);
        ts.push(u8::try_from(hist.len()).unwrap());
        ts.extend_from_slice(hist);
        let mut req = vec![0x0a, u8::try_from(ts.len()).unwrap()];
        req.extend_from_slice(&ts);
        let got = decode_uncompressed(&req, &WireLimits::default()).unwrap();
        assert_eq!(got.skipped_histograms, 1);
    }

    #[test]
    fn whole_request_errors() {
        let limits = WireLimits::default();
        let good = encode(&write_request(&[Sample {
            key: SeriesKey::from_name("a").unwrap(),
            timestamp_ms: Some(1),
            value: 1.0,
        }]))
        .unwrap();
        let cases: &[(&[u8], &str)] = &[
            (b"", "snappy"),
            (b"\xff\xff\xff\xff\xff\xff", "snappy"),
            (b"\x05\x00abc", "snappy"),
            (&good, "ok"),
        ];
        for (body, want) in cases {
            let got = match decode(body, 1 << 20, &limits) {
                Ok(_) => "ok",
                Err(DecodeError::Snappy(_)) => "snappy",
                Err(DecodeError::Protobuf(_)) => "protobuf",
                Err(DecodeError::TooLarge { .. }) => "too_large",
                Err(DecodeError::Json(_)) => "json",
            };
            assert_eq!(got, *want, "{body:?}");
        }
        assert!(matches!(
            decode(&good, 3, &limits),
            Err(DecodeError::TooLarge { limit: 3, .. })
        ));
        // the size check happens before decompression: a header claiming 4 GiB is refused
        let huge = [0x80, 0x80, 0x80, 0x80, 0x0f];
        assert!(matches!(
            decode(&huge, 1 << 20, &limits),
            Err(DecodeError::TooLarge { .. })
        ));
        let bad_proto = snap::raw::Encoder::new().compress_vec(b"\x0a\x05ab").unwrap();
        assert!(matches!(
            decode(&bad_proto, 1 << 20, &limits),
            Err(DecodeError::Protobuf(_))
        ));
        let bad_utf8 = snap::raw::Encoder::new()
            .compress_vec(&[0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe])
            .unwrap();
        assert!(matches!(
            decode(&bad_utf8, 1 << 20, &limits),
            Err(DecodeError::Protobuf(_))
        ));
        let empty = snap::raw::Encoder::new().compress_vec(b"").unwrap();
        assert_eq!(decode(&empty, 1 << 20, &limits).unwrap(), RemoteWrite::default());
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trips(
            series in proptest::collection::vec(
                (
                    "[a-zA-Z_.:]{1,10}",
                    proptest::collection::btree_map("[a-z_]{1,6}", "\\PC{1,6}", 0..4),
                    proptest::collection::vec((proptest::num::i64::ANY, proptest::num::f64::ANY), 1..5),
                ),
                0..6,
            ),
        ) {
            let mut samples = Vec::new();
            for (name, labels, points) in &series {
                let labels = labels.iter().map(|(k, v)| Label::new(k.clone(), v.clone())).collect();
                let key = SeriesKey::new(name.clone(), labels).unwrap();
                for &(ts, value) in points {
                    samples.push(Sample { key: key.clone(), timestamp_ms: Some(ts), value });
                }
            }
            let body = encode(&write_request(&samples)).unwrap();
            let got = decode(&body, 1 << 24, &WireLimits::default()).unwrap();
            proptest::prop_assert!(got.errors.is_empty());
            proptest::prop_assert_eq!(got.samples.len(), samples.len());
            for (a, b) in got.samples.iter().zip(&samples) {
                proptest::prop_assert_eq!(&a.key, &b.key);
                proptest::prop_assert_eq!(a.timestamp_ms, b.timestamp_ms);
                // prost omits proto3 default values, and -0.0 == 0.0, so -0.0 travels as 0.0
                let want = if b.value == 0.0 { 0.0f64.to_bits() } else { b.value.to_bits() };
                proptest::prop_assert_eq!(a.value.to_bits(), want);
            }
        }
    }
}
