//! Auto Scaling over its real wire protocol (awsQuery): `POST /` with a form body `Action=...&Version=2011-01-01`,
//! XML responses in the 2011-01-01 namespace. Element names follow the deserializers of aws-sdk-autoscaling, and
//! the tests drive this with that SDK. Signatures are not checked.
//!
//! The lifecycle actions refuse what AWS refuses (unknown group, unknown hook, unknown instance, an instance that
//! is not in Terminating:Wait, a wrong token) with `ValidationError`, because a worker that completes its own hook
//! has to cope with exactly those answers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::clock::{self, Now};
use crate::model::fleet::{
    uuid, ActionRef, Fleet, Instance, Lifecycle, LifecycleResult, RefreshPrefs,
};
use crate::model::Refusal;
use crate::runtime::Sim;

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// A refusal, rendered as the Query protocol's `<ErrorResponse>`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn validation(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "ValidationError",
        message: message.into(),
    }
}

/// Every model refusal is a `ValidationError` on this API, with the model's (AWS's) message.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        validation(r.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rid = uuid();
        let body = format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>",
            self.code,
            esc(&self.message)
        );
        (
            self.status,
            [
                ("content-type", "text/xml"),
                ("x-amzn-requestid", rid.as_str()),
            ],
            body,
        )
            .into_response()
    }
}

/// XML text escaping.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// `<Name>text</Name>`, escaped.
fn el(out: &mut String, name: &str, text: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", esc(text));
}

fn ok(action: &str, result_inner: &str) -> Response {
    let rid = uuid();
    let body = format!(
        "<{action}Response xmlns=\"{NS}\"><{action}Result>{result_inner}</{action}Result><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{action}Response>"
    );
    (
        StatusCode::OK,
        [
            ("content-type", "text/xml"),
            ("x-amzn-requestid", rid.as_str()),
        ],
        body,
    )
        .into_response()
}

/// The form parameters of one call.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, body: &[u8]) -> Params {
        let mut m = HashMap::new();
        if let Some(q) = query {
            m.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        m.extend(form_urlencoded::parse(body).into_owned());
        Params(m)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    fn required(&self, k: &str) -> Result<&str, ApiError> {
        self.get(k)
            .ok_or_else(|| validation(format!("1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null", lower_first(k))))
    }
    /// A Query list: `Name.member.1`, `Name.member.2`, ...
    fn list(&self, k: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in 1.. {
            match self.0.get(&format!("{k}.member.{n}")) {
                Some(v) => out.push(v.clone()),
                None => break,
            }
        }
        out
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// `POST /` and `GET /?Action=...`.
pub async fn handle(State(sim): State<Arc<Sim>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = Params::parse(q.as_deref(), &body);
    match dispatch(&sim, &p) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn dispatch(sim: &Arc<Sim>, p: &Params) -> Result<Response, ApiError> {
    let action = p.get("Action").unwrap_or("");
    match action {
        "DescribeAutoScalingGroups" => describe_groups(sim, p),
        "DescribeAutoScalingInstances" => describe_instances(sim, p),
        "DescribeLifecycleHooks" => describe_hooks(sim, p),
        "CompleteLifecycleAction" => lifecycle_action(sim, p, true),
        "RecordLifecycleActionHeartbeat" => lifecycle_action(sim, p, false),
        "SetDesiredCapacity" => set_desired(sim, p),
        "TerminateInstanceInAutoScalingGroup" => terminate(sim, p),
        "StartInstanceRefresh" => start_refresh(sim, p),
        "DescribeInstanceRefreshes" => describe_refreshes(sim, p),
        "CancelInstanceRefresh" => cancel_refresh(sim, p),
        "" => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "MissingAction",
            message: "Missing Action".into(),
        }),
        other => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidAction",
            message: format!("The action {other} is not valid for this web service (spot-sim implements a subset)."),
        }),
    }
}

fn instance_xml(out: &mut String, sim: &Sim, i: &Instance, with_group: bool) {
    out.push_str("<member>");
    el(out, "InstanceId", &i.id);
    if with_group {
        el(out, "AutoScalingGroupName", &sim.settings.group);
    }
    el(out, "InstanceType", &sim.settings.instance_type);
    el(out, "AvailabilityZone", &i.az);
    el(out, "LifecycleState", i.lifecycle.as_str());
    // DescribeAutoScalingInstances spells health in upper case, DescribeAutoScalingGroups in title case.
    el(
        out,
        "HealthStatus",
        if with_group { "HEALTHY" } else { "Healthy" },
    );
    launch_template_xml(out, i.version);
    el(out, "ProtectedFromScaleIn", "false");
    out.push_str("</member>");
}

const TEMPLATE_ID: &str = "lt-0123456789abcdef0";
const TEMPLATE_NAME: &str = "order-worker";

fn launch_template_xml(out: &mut String, version: u32) {
    out.push_str("<LaunchTemplate>");
    el(out, "LaunchTemplateId", TEMPLATE_ID);
    el(out, "LaunchTemplateName", TEMPLATE_NAME);
    el(out, "Version", &version.to_string());
    out.push_str("</LaunchTemplate>");
}

/// Instances the group still reports: terminated ones drop out, as they do on AWS shortly after.
fn listed(fleet: &Fleet) -> impl Iterator<Item = &Instance> {
    fleet
        .instances
        .iter()
        .filter(|i| i.lifecycle != Lifecycle::Terminated)
}

fn describe_groups(sim: &Sim, p: &Params) -> Result<Response, ApiError> {
    let names = p.list("AutoScalingGroupNames");
    let s = &sim.settings;
    let mut out = String::from("<AutoScalingGroups>");
    if names.is_empty() || names.contains(&s.group) {
        let st = sim.lock();
        let st = &st.fleet;
        out.push_str("<member>");
        el(&mut out, "AutoScalingGroupName", &s.group);
        el(&mut out, "AutoScalingGroupARN", &s.group_arn());
        launch_template_xml(&mut out, st.version);
        el(&mut out, "MinSize", &s.min_size.to_string());
        el(&mut out, "MaxSize", &s.max_size.to_string());
        el(&mut out, "DesiredCapacity", &st.desired.to_string());
        el(&mut out, "DefaultCooldown", "300");
        out.push_str("<AvailabilityZones>");
        for z in s.zones() {
            el(&mut out, "member", &z);
        }
        out.push_str("</AvailabilityZones>");
        el(&mut out, "HealthCheckType", "EC2");
        el(&mut out, "HealthCheckGracePeriod", "300");
        el(
            &mut out,
            "DefaultInstanceWarmup",
            &s.instance_warmup.as_secs().to_string(),
        );
        out.push_str("<Instances>");
        for i in listed(st) {
            instance_xml(&mut out, sim, i, false);
        }
        out.push_str("</Instances>");
        el(&mut out, "CreatedTime", &clock::iso_millis(s.created_at));
        out.push_str("<Tags>");
        out.push_str("<member>");
        el(&mut out, "ResourceId", &s.group);
        el(&mut out, "ResourceType", "auto-scaling-group");
        el(&mut out, "Key", "Name");
        el(&mut out, "Value", "order-worker");
        el(&mut out, "PropagateAtLaunch", "true");
        out.push_str("</member></Tags>");
        out.push_str("<TerminationPolicies><member>Default</member></TerminationPolicies>");
        el(&mut out, "NewInstancesProtectedFromScaleIn", "false");
        el(
            &mut out,
            "CapacityRebalance",
            if s.capacity_rebalance {
                "true"
            } else {
                "false"
            },
        );
        out.push_str("</member>");
    }
    out.push_str("</AutoScalingGroups>");
    Ok(ok("DescribeAutoScalingGroups", &out))
}

fn describe_instances(sim: &Sim, p: &Params) -> Result<Response, ApiError> {
    let ids = p.list("InstanceIds");
    let st = sim.lock();
    let mut out = String::from("<AutoScalingInstances>");
    for i in listed(&st.fleet).filter(|i| ids.is_empty() || ids.contains(&i.id)) {
        instance_xml(&mut out, sim, i, true);
    }
    out.push_str("</AutoScalingInstances>");
    Ok(ok("DescribeAutoScalingInstances", &out))
}

fn describe_hooks(sim: &Sim, p: &Params) -> Result<Response, ApiError> {
    sim.lock()
        .fleet
        .check_group(p.required("AutoScalingGroupName")?)?;
    let names = p.list("LifecycleHookNames");
    let s = &sim.settings;
    let mut out = String::from("<LifecycleHooks>");
    if names.is_empty() || names.contains(&s.hook) {
        out.push_str("<member>");
        el(&mut out, "LifecycleHookName", &s.hook);
        el(&mut out, "AutoScalingGroupName", &s.group);
        el(
            &mut out,
            "LifecycleTransition",
            "autoscaling:EC2_INSTANCE_TERMINATING",
        );
        // Reported in simulated seconds: what the group is configured with, whatever the time scale.
        el(
            &mut out,
            "HeartbeatTimeout",
            &s.hook_timeout.as_secs().to_string(),
        );
        el(
            &mut out,
            "GlobalTimeout",
            &s.hook_global_timeout().as_secs().to_string(),
        );
        el(&mut out, "DefaultResult", "CONTINUE");
        out.push_str("</member>");
    }
    out.push_str("</LifecycleHooks>");
    Ok(ok("DescribeLifecycleHooks", &out))
}

/// CompleteLifecycleAction (`complete`) and RecordLifecycleActionHeartbeat.
fn lifecycle_action(sim: &Arc<Sim>, p: &Params, complete: bool) -> Result<Response, ApiError> {
    let hook = p.required("LifecycleHookName")?;
    let group = p.required("AutoScalingGroupName")?;
    let result = if complete {
        let r = p.required("LifecycleActionResult")?;
        let parsed = LifecycleResult::parse(r).ok_or_else(|| {
            validation(format!(
                "Invalid LifecycleActionResult {r}: must be CONTINUE or ABANDON"
            ))
        })?;
        Some(parsed)
    } else {
        None
    };
    let target = ActionRef {
        instance: p.get("InstanceId"),
        token: p.get("LifecycleActionToken"),
    };
    match result {
        Some(r) => {
            sim.step(|st, now| {
                match st
                    .fleet
                    .complete_lifecycle_action(now, group, hook, target, r)
                {
                    Ok(effects) => (Ok(()), effects),
                    Err(e) => (Err(e), Vec::new()),
                }
            })?;
            Ok(ok("CompleteLifecycleAction", ""))
        }
        None => {
            sim.lock()
                .fleet
                .record_heartbeat(Now::read(), group, hook, target)?;
            Ok(ok("RecordLifecycleActionHeartbeat", ""))
        }
    }
}

fn set_desired(sim: &Arc<Sim>, p: &Params) -> Result<Response, ApiError> {
    let mut st = sim.lock();
    st.fleet.check_group(p.required("AutoScalingGroupName")?)?;
    let raw = p.required("DesiredCapacity")?;
    let n: u32 = raw
        .parse()
        .map_err(|_| validation(format!("Invalid DesiredCapacity {raw}")))?;
    st.fleet.set_desired(Now::read(), n)?;
    Ok(ok("SetDesiredCapacity", ""))
}

fn terminate(sim: &Arc<Sim>, p: &Params) -> Result<Response, ApiError> {
    let id = p.required("InstanceId")?;
    let decrement = match p.required("ShouldDecrementDesiredCapacity")? {
        "true" => true,
        "false" => false,
        other => {
            return Err(validation(format!(
                "Invalid ShouldDecrementDesiredCapacity {other}"
            )))
        }
    };
    let now = Now::read();
    sim.lock().fleet.terminate_instance(now, id, decrement)?;
    let now = now.wall;
    let mut out = String::from("<Activity>");
    el(&mut out, "ActivityId", &uuid());
    el(&mut out, "AutoScalingGroupName", &sim.settings.group);
    el(
        &mut out,
        "Description",
        &format!("Terminating EC2 instance: {id}"),
    );
    el(
        &mut out,
        "Cause",
        &format!(
            "At {} instance {id} was taken out of service in response to a user request.",
            clock::iso_millis(now)
        ),
    );
    el(&mut out, "StartTime", &clock::iso_millis(now));
    el(&mut out, "StatusCode", "InProgress");
    el(&mut out, "Progress", "0");
    el(&mut out, "Details", "{}");
    out.push_str("</Activity>");
    Ok(ok("TerminateInstanceInAutoScalingGroup", &out))
}

/// A `Preferences.*` boolean.
fn flag(p: &Params, k: &str) -> Result<Option<bool>, ApiError> {
    match p.get(k) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(validation(format!("Invalid {k} {other}"))),
    }
}

/// A `Preferences.*` whole number.
fn number(p: &Params, k: &str) -> Result<Option<u32>, ApiError> {
    p.get(k)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| validation(format!("Invalid {k} {v}")))
        })
        .transpose()
}

/// StartInstanceRefresh: Strategy Rolling; Preferences MinHealthyPercentage, InstanceWarmup, SkipMatching;
/// DesiredConfiguration.LaunchTemplate (name or id of the one template, a version number, `$Latest` or
/// `$Default`). Other preferences are refused rather than ignored.
fn start_refresh(sim: &Arc<Sim>, p: &Params) -> Result<Response, ApiError> {
    sim.lock()
        .fleet
        .check_group(p.required("AutoScalingGroupName")?)?;
    if let Some(s) = p.get("Strategy").filter(|s| *s != "Rolling") {
        return Err(validation(format!(
            "Strategy {s} is not supported (spot-sim models Rolling)"
        )));
    }
    let known = [
        "Preferences.MinHealthyPercentage",
        "Preferences.InstanceWarmup",
        "Preferences.SkipMatching",
    ];
    if let Some(k) =
        p.0.keys()
            .find(|k| k.starts_with("Preferences.") && !known.contains(&k.as_str()))
    {
        return Err(validation(format!("{k} is not supported by spot-sim")));
    }
    let mut prefs = RefreshPrefs::default_for(&sim.settings);
    if let Some(v) = number(p, "Preferences.MinHealthyPercentage")? {
        prefs.min_healthy_percentage = v;
    }
    if let Some(v) = number(p, "Preferences.InstanceWarmup")? {
        prefs.instance_warmup = std::time::Duration::from_secs(u64::from(v));
    }
    if let Some(v) = flag(p, "Preferences.SkipMatching")? {
        prefs.skip_matching = v;
    }
    let lt = "DesiredConfiguration.LaunchTemplate.";
    for k in ["LaunchTemplateName", "LaunchTemplateId"] {
        if let Some(v) = p.get(&format!("{lt}{k}")) {
            if v != TEMPLATE_NAME && v != TEMPLATE_ID {
                return Err(validation(format!(
                    "The launch template {v} does not exist."
                )));
            }
        }
    }
    let id = sim.step(|st, now| {
        let version = match p.get(&format!("{lt}Version")) {
            None | Some("$Default") => None,
            Some("$Latest") => Some(st.fleet.templates.len() as u32),
            Some(v) => match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return (
                        Err(validation(format!("Invalid launch template version {v}"))),
                        Vec::new(),
                    )
                }
            },
        };
        let r = st
            .fleet
            .start_refresh(now, version, prefs)
            .map_err(|e| match e {
                crate::model::Refusal::WrongState(m) => ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "InstanceRefreshInProgress",
                    message: m,
                },
                other => other.into(),
            });
        (r, Vec::new())
    })?;
    let mut out = String::new();
    el(&mut out, "InstanceRefreshId", &id);
    Ok(ok("StartInstanceRefresh", &out))
}

fn describe_refreshes(sim: &Sim, p: &Params) -> Result<Response, ApiError> {
    let st = sim.lock();
    st.fleet.check_group(p.required("AutoScalingGroupName")?)?;
    let ids = p.list("InstanceRefreshIds");
    let mut out = String::from("<InstanceRefreshes>");
    // Newest first, as AWS lists them.
    for r in st
        .fleet
        .refreshes
        .iter()
        .rev()
        .filter(|r| ids.is_empty() || ids.contains(&r.id))
    {
        out.push_str("<member>");
        el(&mut out, "InstanceRefreshId", &r.id);
        el(&mut out, "AutoScalingGroupName", &sim.settings.group);
        el(&mut out, "Status", r.status.as_str());
        if !r.status_reason.is_empty() {
            el(&mut out, "StatusReason", &r.status_reason);
        }
        el(&mut out, "StartTime", &clock::iso_millis(r.start));
        if let Some(end) = r.end {
            el(&mut out, "EndTime", &clock::iso_millis(end));
        }
        el(
            &mut out,
            "PercentageComplete",
            &r.percentage_complete(&st.fleet).to_string(),
        );
        el(
            &mut out,
            "InstancesToUpdate",
            &r.instances_to_update(&st.fleet).to_string(),
        );
        out.push_str("<Preferences>");
        el(
            &mut out,
            "MinHealthyPercentage",
            &r.prefs.min_healthy_percentage.to_string(),
        );
        el(
            &mut out,
            "InstanceWarmup",
            &r.prefs.instance_warmup.as_secs().to_string(),
        );
        el(&mut out, "SkipMatching", &r.prefs.skip_matching.to_string());
        out.push_str("</Preferences>");
        out.push_str("<DesiredConfiguration>");
        launch_template_xml(&mut out, r.version);
        out.push_str("</DesiredConfiguration>");
        el(&mut out, "Strategy", "Rolling");
        out.push_str("</member>");
    }
    out.push_str("</InstanceRefreshes>");
    Ok(ok("DescribeInstanceRefreshes", &out))
}

fn cancel_refresh(sim: &Arc<Sim>, p: &Params) -> Result<Response, ApiError> {
    let mut st = sim.lock();
    st.fleet.check_group(p.required("AutoScalingGroupName")?)?;
    let id = st.fleet.cancel_refresh(Now::read()).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "ActiveInstanceRefreshNotFound",
        message: e.message().to_string(),
    })?;
    let mut out = String::new();
    el(&mut out, "InstanceRefreshId", &id);
    Ok(ok("CancelInstanceRefresh", &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lists_and_escaping() {
        let p = Params::parse(
            Some("Action=DescribeAutoScalingInstances"),
            b"InstanceIds.member.1=i-1&InstanceIds.member.2=i-2&Version=2011-01-01",
        );
        assert_eq!(p.get("Action"), Some("DescribeAutoScalingInstances"));
        assert_eq!(p.list("InstanceIds"), vec!["i-1", "i-2"]);
        assert!(p.list("Nothing").is_empty());
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
        assert_eq!(lower_first("LifecycleHookName"), "lifecycleHookName");
    }
}
