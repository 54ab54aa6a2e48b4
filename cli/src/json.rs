//! Proto messages → `serde_json::Value`, written by hand (the generated types do
//! not derive `Serialize`). Enums use their SPEC names without the proto
//! prefix (`DEPLOYED`), timestamps RFC 3339 strings (null when unset).

use aibro_proto::v1::{
    Hardware, Instance, Job, JobEvent, Machine, Phase, PredictResponse, Timeline,
};
use prost_types::Timestamp;
use serde_json::{json, Value};

use crate::display;

fn time(ts: &Option<Timestamp>) -> Value {
    match ts {
        Some(_) => Value::String(display::rfc3339(ts)),
        None => Value::Null,
    }
}

/// A payload: parsed JSON when the content type says JSON and it parses,
/// a string when it is UTF-8, `{"base64": …}` otherwise.
pub fn payload(data: &[u8], content_type: &str) -> Value {
    if is_json_type(content_type) {
        if let Ok(v) = serde_json::from_slice(data) {
            return v;
        }
    }
    match std::str::from_utf8(data) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": display::base64(data) }),
    }
}

/// `application/json`, `application/json; charset=utf-8`, `application/x+json`, or empty.
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.is_empty() || essence == "application/json" || essence.ends_with("+json")
}

pub fn hardware(hw: &Option<Hardware>) -> Value {
    let Some(hw) = hw else { return Value::Null };
    json!({
        "hostname": hw.hostname,
        "cpus": hw.cpus,
        "memory_bytes": hw.memory_bytes,
        "gpus": hw.gpus.iter().map(|g| json!({
            "index": g.index,
            "name": g.name,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_used_bytes": g.memory_used_bytes,
        })).collect::<Vec<_>>(),
    })
}

pub fn instance(i: &Instance) -> Value {
    json!({
        "instance_id": i.instance_id,
        "job_id": i.job_id,
        "role": display::role(i.role),
        "machine_id": i.machine_id,
        "status": display::instance_status(i.status),
        "substatus": display::instance_substatus(i.substatus),
        "agent_address": i.agent_address,
        "hardware": hardware(&i.hardware),
        "price_per_hour": i.price_per_hour,
        "running_ms": i.running_ms,
        "cost_usd": i.cost_usd,
        "in_flight": i.in_flight,
        "queued": i.queued,
        "workers_alive": i.workers_alive,
        "workers": i.workers,
        "gpus": i.gpus.iter().map(|g| json!({
            "index": g.index,
            "name": g.name,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_used_bytes": g.memory_used_bytes,
        })).collect::<Vec<_>>(),
        "replaces": i.replaces,
        "reason": i.reason,
        "host": i.host,
        "sandbox": i.sandbox,
        "last_heartbeat_at": time(&i.last_heartbeat_at),
        "created_at": time(&i.created_at),
        "updated_at": time(&i.updated_at),
    })
}

pub fn job(j: &Job) -> Value {
    json!({
        "job_id": j.job_id,
        "owner": j.owner,
        "kind": display::kind(j.kind),
        "model_name": j.model_name,
        "status": display::job_status(j.status),
        "substatus": display::job_substatus(j.substatus),
        "reason": j.reason,
        "standby_machine": j.standby_machine,
        "cooling_machine": j.cooling_machine,
        "machine_ids": j.machine_ids,
        "artifact_digest": j.artifact_digest,
        "cool_down_period_s": j.cool_down_period_s,
        "wait_request_s": j.wait_request_s,
        "batching": j.batching.as_ref().map(|b| json!({
            "max_batch_size": b.max_batch_size,
            "max_wait_ms": b.max_wait_ms,
        })),
        "client_ids": j.client_ids,
        "isolate_network": j.isolate_network,
        "dryrun": j.dryrun,
        "description": j.description,
        "created_at": time(&j.created_at),
        "updated_at": time(&j.updated_at),
        "predict_address": j.predict_address,
        "cost_usd": j.cost_usd,
        "always_on_cost_usd": j.always_on_cost_usd,
        "instances": j.instances.iter().map(instance).collect::<Vec<_>>(),
    })
}

pub fn event(e: &JobEvent) -> Value {
    let mut v = json!({
        "job_id": e.job_id,
        "seq": e.seq,
        "at": time(&e.at),
        "status": display::job_status(e.status),
        "substatus": display::job_substatus(e.substatus),
        "phase": e.phase,
        "message": e.message,
    });
    if !e.instance_id.is_empty() {
        v["instance_id"] = json!(e.instance_id);
        if e.instance_status != 0 {
            v["instance_status"] = json!(display::instance_status(e.instance_status));
            v["instance_substatus"] = json!(display::instance_substatus(e.instance_substatus));
        }
    }
    v
}

pub fn phase(p: &Phase, offset_ms: u64, duration_ms: u64) -> Value {
    json!({
        "name": p.name,
        "instance_id": p.instance_id,
        "started_at": time(&p.started_at),
        "ended_at": time(&p.ended_at),
        "running": p.ended_at.is_none(),
        "offset_ms": offset_ms,
        "duration_ms": duration_ms,
    })
}

pub fn timeline(t: &Timeline, phases: Vec<Value>) -> Value {
    json!({
        "job_id": t.job_id,
        "phases": phases,
        "events": t.events.iter().map(event).collect::<Vec<_>>(),
    })
}

pub fn machine(m: &Machine) -> Value {
    json!({
        "machine_id": m.machine_id,
        "gpu_type": m.gpu_type,
        "gpu_count": m.gpu_count,
        "vcpus": m.vcpus,
        "memory_gib": m.memory_gib,
        "spot_price_per_hour": m.spot_price_per_hour,
        "on_demand_price_per_hour": m.on_demand_price_per_hour,
        "capacity": m.capacity,
        "available": m.available,
        "spot_availability": m.spot_availability,
        "provider": m.provider,
    })
}

pub fn prediction(p: &PredictResponse) -> Value {
    json!({
        "output": payload(&p.output, &p.content_type),
        "content_type": p.content_type,
        "instance_id": p.instance_id,
        "role": display::role(p.role),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_kinds() {
        assert_eq!(payload(br#"{"a":1}"#, "application/json"), json!({"a": 1}));
        assert_eq!(payload(b"hi", "text/plain"), json!("hi"));
        assert_eq!(payload(b"not json", "application/json"), json!("not json"));
        assert_eq!(
            payload(&[0xff, 0x00], "application/octet-stream"),
            json!({"base64": "/wA="})
        );
    }

    #[test]
    fn json_types() {
        assert!(is_json_type("application/json; charset=utf-8"));
        assert!(is_json_type("application/problem+json"));
        assert!(is_json_type(""));
        assert!(!is_json_type("image/png"));
    }

    #[test]
    fn event_includes_instance_fields_only_when_set() {
        let e = JobEvent {
            job_id: "j".into(),
            seq: 1,
            status: 1,
            substatus: 1,
            ..Default::default()
        };
        let v = event(&e);
        assert_eq!(v["status"], "QUEUING");
        assert_eq!(v["substatus"], "REQUESTING_SERVER");
        assert!(v.get("instance_id").is_none());
        assert_eq!(v["at"], Value::Null);
    }
}
