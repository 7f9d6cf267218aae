//! The manifest as written: serde structs that mirror the YAML exactly
//! (camelCase, unknown fields rejected), every field optional. Checking
//! values, filling defaults and resolving paths is `validate`'s job.
//!
//! Scalars that need parsing (quantities, durations) are read as strings:
//! serde_yaml_ng hands over the text of a plain scalar as written, so
//! `memory: 67108864`, `cpu: 0.5` and `memory: 1e6` arrive verbatim.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a Service manifest (a mapping with apiVersion, kind, metadata and spec)"
)]
pub(crate) struct RawService {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<RawMetadata>,
    pub spec: Option<RawSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with name, labels and resourceVersion")]
pub(crate) struct RawMetadata {
    pub name: Option<String>,
    pub labels: Option<StringMap>,
    pub resource_version: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with module, replicas, routes, env, resources, limits, instances, timeout, autoscale, \
                 allowOutbound, readiness and liveness"
)]
pub(crate) struct RawSpec {
    pub module: Option<String>,
    pub replicas: Option<WholeNumber>,
    pub routes: Option<Vec<RawRoute>>,
    pub env: Option<StringMap>,
    pub resources: Option<RawResources>,
    pub limits: Option<RawLimits>,
    pub instances: Option<RawInstances>,
    pub timeout: Option<String>,
    pub autoscale: Option<RawAutoscale>,
    pub allow_outbound: Option<Vec<String>>,
    pub readiness: Option<RawProbe>,
    pub liveness: Option<RawProbe>,
}

/// `spec.readiness` and `spec.liveness`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with path, initialDelaySeconds, periodSeconds, timeoutSeconds and failureThreshold"
)]
pub(crate) struct RawProbe {
    pub path: Option<String>,
    pub initial_delay_seconds: Option<WholeNumber>,
    pub period_seconds: Option<WholeNumber>,
    pub timeout_seconds: Option<WholeNumber>,
    pub failure_threshold: Option<WholeNumber>,
}

/// `spec.autoscale`. Durations and percentages are read as strings (a
/// percentage may be written `70` or `"70%"`) and parsed in validation.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with min, max, metric, target, targetUtilization, stableWindow, panicWindow, \
                 panicThreshold, tolerance, maxScaleUpRate, maxScaleDownRate and scaleToZeroGracePeriod"
)]
pub(crate) struct RawAutoscale {
    pub min: Option<WholeNumber>,
    pub max: Option<WholeNumber>,
    pub metric: Option<String>,
    pub target: Option<WholeNumber>,
    pub target_utilization: Option<String>,
    pub stable_window: Option<String>,
    pub panic_window: Option<String>,
    pub panic_threshold: Option<String>,
    pub tolerance: Option<String>,
    pub max_scale_up_rate: Option<WholeNumber>,
    pub max_scale_down_rate: Option<WholeNumber>,
    pub scale_to_zero_grace_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with concurrency, queue, requestBody and callResponseBody"
)]
pub(crate) struct RawLimits {
    pub concurrency: Option<WholeNumber>,
    pub queue: Option<WholeNumber>,
    pub request_body: Option<String>,
    pub call_response_body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with maxRequests and maxIdle")]
pub(crate) struct RawInstances {
    pub max_requests: Option<WholeNumber>,
    pub max_idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a route (a mapping with host and/or path, and tls)"
)]
pub(crate) struct RawRoute {
    pub host: Option<String>,
    pub path: Option<String>,
    pub tls: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with memory, cpu and instanceMemory")]
pub(crate) struct RawResources {
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub instance_memory: Option<String>,
}

/// An integer; range checks happen in validation so the message can name
/// the allowed range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WholeNumber(pub i128);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WholeNumberVisitor;

        impl Visitor<'_> for WholeNumberVisitor {
            type Value = WholeNumber;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v.into()))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v))
            }
        }

        deserializer.deserialize_i64(WholeNumberVisitor)
    }
}

/// A `map<string, string>` that, unlike `BTreeMap`'s own impl, rejects a key
/// given twice and reads a null value (`KEY:` or `KEY: ~`) as "".
#[derive(Debug, Default)]
pub(crate) struct StringMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringMapVisitor;

        impl<'de> Visitor<'de> for StringMapVisitor {
            type Value = StringMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Option<String>>()?.unwrap_or_default();
                    if entries.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("key {key:?} appears more than once")));
                    }
                    entries.insert(key, value);
                }
                Ok(StringMap(entries))
            }
        }

        deserializer.deserialize_map(StringMapVisitor)
    }
}
