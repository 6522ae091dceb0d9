//! Prometheus metrics, exposed in the text format on `GET /metrics`.

use std::collections::HashMap;

use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::types::ImageResult;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0];
const DETECTION_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

pub struct Metrics {
    registry: Registry,
    /// Requests by route, status and request content type.
    pub requests: IntCounterVec,
    /// Total request latency by route.
    pub request_seconds: HistogramVec,
    /// Per-stage latency: pipeline stages plus `queue_wait`, `read_body`, `parse`, `encode`.
    pub stage_seconds: HistogramVec,
    pub inflight: IntGauge,
    pub queue_depth: IntGauge,
    pub model_load_seconds: Gauge,
    pub model_ready: IntGauge,
    pub detections: Histogram,
    /// Constant 1, labelled with the execution provider in use.
    pub execution_provider: GaugeVec,
    /// Jobs dropped without an answer: `overloaded`, `deadline`, `client_gone`.
    pub discarded: IntCounterVec,
    /// Images per graph run.
    pub batch_size: Histogram,
    /// Time a prepared image waited in the batcher for a backend.
    pub batch_queue_wait: Histogram,
    /// Memory a loaded model holds, by `memory` (`host`, `arena`, `gpu`); multi-model mode.
    pub model_memory: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails for invalid metric names/labels or duplicate registration, both fixed at
    // compile time here: a programming error, caught by the unit test below.
    r.expect("metric definition")
}

impl Metrics {
    pub fn new(namespace: &str) -> Self {
        Self::labelled(namespace, &[])
    }

    /// One model's metrics in multi-model mode: every series carries `model="<name>"`.
    pub fn for_model(namespace: &str, model: &str) -> Self {
        Self::labelled(namespace, &[("model", model)])
    }

    fn labelled(namespace: &str, labels: &[(&str, &str)]) -> Self {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Every metric of this registry: the namespace and the constant labels.
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace(namespace)
                .const_labels(labels.clone())
        };
        let hopts = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .namespace(namespace)
                .const_labels(labels.clone())
                .buckets(buckets.to_vec())
        };
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            opts(
                "http_requests_total",
                "HTTP requests by route, status and content type",
            ),
            &["route", "status", "content_type"],
        ));
        let request_seconds = must(HistogramVec::new(
            hopts(
                "http_request_duration_seconds",
                "HTTP request latency",
                LATENCY_BUCKETS,
            ),
            &["route"],
        ));
        let stage_seconds = must(HistogramVec::new(
            hopts(
                "stage_duration_seconds",
                "Latency of each inference stage",
                LATENCY_BUCKETS,
            ),
            &["stage"],
        ));
        let inflight = must(IntGauge::with_opts(opts(
            "inflight_requests",
            "Invocations being served",
        )));
        let queue_depth = must(IntGauge::with_opts(opts(
            "queue_depth",
            "Inference jobs waiting for a worker",
        )));
        let model_load_seconds = must(Gauge::with_opts(opts(
            "model_load_seconds",
            "Time taken to load the model",
        )));
        let model_ready = must(IntGauge::with_opts(opts(
            "model_ready",
            "1 when the model is loaded and serving",
        )));
        let detections = must(Histogram::with_opts(hopts(
            "detections_per_image",
            "Detections returned per image",
            DETECTION_BUCKETS,
        )));
        let execution_provider = must(GaugeVec::new(
            opts(
                "execution_provider_info",
                "The ONNX Runtime execution provider in use",
            ),
            &["provider"],
        ));
        let discarded = must(IntCounterVec::new(
            opts(
                "jobs_discarded_total",
                "Inference jobs dropped without a result",
            ),
            &["reason"],
        ));
        let batch_size = must(Histogram::with_opts(hopts(
            "batch_size",
            "Images per graph run",
            BATCH_BUCKETS,
        )));
        let batch_queue_wait = must(Histogram::with_opts(hopts(
            "batch_queue_wait_seconds",
            "Time a preprocessed image waited in the batcher for a backend",
            LATENCY_BUCKETS,
        )));
        let model_memory = must(IntGaugeVec::new(
            opts("model_memory_bytes", "Memory held by a loaded model"),
            &["memory"],
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(inflight.clone()),
            Box::new(queue_depth.clone()),
            Box::new(model_load_seconds.clone()),
            Box::new(model_ready.clone()),
            Box::new(detections.clone()),
            Box::new(execution_provider.clone()),
            Box::new(discarded.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_queue_wait.clone()),
            Box::new(model_memory.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            requests,
            request_seconds,
            stage_seconds,
            inflight,
            queue_depth,
            model_load_seconds,
            model_ready,
            detections,
            execution_provider,
            discarded,
            batch_size,
            batch_queue_wait,
            model_memory,
        }
    }

    /// Sets `model_memory_bytes{memory=kind}`.
    pub fn set_model_memory(&self, kind: &str, bytes: u64) {
        self.model_memory
            .with_label_values(&[kind])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records the per-stage timings and detection count of one image.
    pub fn observe_result(&self, r: &ImageResult) {
        let t = &r.timings;
        for (stage, ms) in [
            ("decode", t.decode),
            ("preprocess", t.preprocess),
            ("backbone_rpn", t.backbone_rpn),
            ("proposals", t.proposals),
            ("box_head", t.box_head),
            ("detections", t.detections),
            ("mask_head", t.mask_head),
            ("paste_encode", t.paste_encode),
        ] {
            self.stage_seconds
                .with_label_values(&[stage])
                .observe(ms / 1000.0);
        }
        self.detections.observe(r.detections.len() as f64);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        render_all(&[self])
    }
}

/// One page for several registries (the server's and each loaded model's): a family that
/// several define is written once, with all their series, as the format requires.
pub fn render_all(all: &[&Metrics]) -> Vec<u8> {
    let mut families: Vec<MetricFamily> = Vec::new();
    for m in all {
        for fam in m.registry.gather() {
            match families.iter_mut().find(|f| f.name() == fam.name()) {
                Some(f) => f.mut_metric().extend(fam.get_metric().iter().cloned()),
                None => families.push(fam),
            }
        }
    }
    let mut out = Vec::new();
    // Encoding into a Vec only fails on invalid metric families, which cannot occur for
    // families gathered from our own registries; an empty page is the safe fallback.
    if TextEncoder::new().encode(&families, &mut out).is_err() {
        out.clear();
    }
    out
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new("maskserve");
        m.requests
            .with_label_values(&["/invocations", "200", "image/png"])
            .inc();
        m.execution_provider.with_label_values(&["cpu"]).set(1.0);
        m.observe_result(&ImageResult {
            width: 1,
            height: 1,
            detections: vec![],
            timings: Default::default(),
        });
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "maskserve_http_requests_total{content_type=\"image/png\",route=\"/invocations\",status=\"200\"} 1"
        ));
        assert!(text.contains("maskserve_execution_provider_info{provider=\"cpu\"} 1"));
        assert!(text.contains("maskserve_stage_duration_seconds_bucket{stage=\"decode\""));
        assert!(text.contains("# TYPE maskserve_detections_per_image histogram"));
    }

    #[test]
    fn merges_model_registries_into_one_family_each() {
        let server = Metrics::new("maskserve");
        let a = Metrics::for_model("maskserve", "a");
        let b = Metrics::for_model("maskserve", "b");
        a.batch_size.observe(2.0);
        b.batch_size.observe(1.0);
        b.model_memory.with_label_values(&["host"]).set(42);
        let text = String::from_utf8(render_all(&[&server, &a, &b])).unwrap();
        assert_eq!(
            text.matches("# TYPE maskserve_batch_size histogram")
                .count(),
            1
        );
        assert!(text.contains("maskserve_batch_size_count{model=\"a\"} 1"));
        assert!(text.contains("maskserve_batch_size_count{model=\"b\"} 1"));
        assert!(text.contains("maskserve_model_memory_bytes{memory=\"host\",model=\"b\"} 42"));
    }
}
