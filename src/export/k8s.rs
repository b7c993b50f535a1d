//! Units as Kubernetes objects: one pod that runs corral with the units from a ConfigMap
//! (`--wrap`), or one container per unit (`--split`). See docs/kubernetes.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, ExecAction, HTTPGetAction, KeyToPath, Pod, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Warning, Warnings, binary_size, byte_limit, ceil_secs, shutdown_chain, start_deps,
    started_units,
};
use crate::core::graph::DepGraph;
use crate::unit::{
    ByteLimit, Probe as UnitProbe, ProbeConfig, ReadyMode, RestartPolicy, Unit, UnitKind, UnitName,
    UnitSet,
};

/// The port of the wrapped corral's `--probe-listen` (on every address of the pod), which the
/// kubelet's HTTP probes ask: `/livez` (corral's loop turns) and `/readyz` (every enabled unit
/// is ready). Named `probes` in the container's ports. See docs/kubernetes.md, "Probes".
pub const PROBE_PORT: u16 = 9101;
/// The container port's name the probes refer to.
const PROBE_PORT_NAME: &str = "probes";

/// An HTTP probe of the wrapped corral's probe listener.
fn probe_endpoint(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PROBE_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Where the wrapped pod mounts the units' ConfigMap: corral's default units directory.
pub const UNITS_MOUNT: &str = "/etc/corral/units";
/// The `--shutdown-timeout` corral runs with (its default): part of the grace period.
const CORRAL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for corral itself and the kubelet's signal delivery, on top of the units' own stops.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// corral's own memory beside its units, added to the wrapped container's limit so that a
/// unit meets its own memory-max (and corral's OOM policy) before the container meets its limit.
const CORRAL_MEMORY: u64 = 32 << 20;

/// One pod around corral, or one container per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Wrap,
    Split,
}

/// The object that holds the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Pod,
    Deployment,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub layout: Layout,
    pub workload: Workload,
    /// The pod's (or Deployment's) name; the ConfigMap is `<name>-units`.
    pub name: String,
    /// The image of every container: it must hold corral (wrap) or the units' commands (split).
    pub image: String,
    /// Run the wrapped container privileged, so corral may write its cgroups and make namespaces.
    pub privileged: bool,
}

/// A Kubernetes object of the export, in the order it should be applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    ConfigMap(Box<ConfigMap>),
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
}

#[derive(Debug)]
pub struct Output {
    pub objects: Vec<Object>,
    pub warnings: Vec<Warning>,
}

/// The units as Kubernetes objects. `sources` holds each unit file's text, for the ConfigMap of
/// `--wrap`; `--split` does not read it.
/// `Err` when `--split` finds no unit to run: a pod needs at least one container.
pub fn export(
    units: &UnitSet,
    sources: &BTreeMap<UnitName, String>,
    options: &Options,
) -> Result<Output, String> {
    if options.layout == Layout::Split && started_units(units).is_empty() {
        return Err("no enabled service or oneshot to run: a pod needs a container".to_owned());
    }
    let mut warnings = Warnings::default();
    let mut objects = Vec::new();
    let spec = match options.layout {
        Layout::Wrap => {
            let (config_map, spec) = wrap(units, sources, options, &mut warnings);
            objects.push(Object::ConfigMap(Box::new(config_map)));
            spec
        }
        Layout::Split => split(units, options, &mut warnings),
    };
    objects.push(workload(spec, options));
    Ok(Output {
        objects,
        warnings: warnings.into_vec(),
    })
}

/// Every object as one multi-document YAML stream.
pub fn to_yaml(objects: &[Object]) -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&match object {
            Object::ConfigMap(o) => serde_norway::to_string(o)?,
            Object::Pod(o) => serde_norway::to_string(o)?,
            Object::Deployment(o) => serde_norway::to_string(o)?,
        });
    }
    Ok(out)
}

/// Whether `name` may name a pod, a Deployment and (with `-units`) a ConfigMap: a DNS-1123
/// label short enough for the suffix.
pub fn valid_object_name(name: &str) -> bool {
    is_dns_label(name) && name.len() + "-units".len() <= 63
}

fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn labels(options: &Options) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), options.name.clone())])
}

fn workload(spec: PodSpec, options: &Options) -> Object {
    let metadata = ObjectMeta {
        name: Some(options.name.clone()),
        labels: Some(labels(options)),
        ..ObjectMeta::default()
    };
    match options.workload {
        Workload::Pod => Object::Pod(Box::new(Pod {
            metadata,
            spec: Some(spec),
            status: None,
        })),
        Workload::Deployment => Object::Deployment(Box::new(Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: Some(labels(options)),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(options)),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(spec),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        })),
    }
}

// ---------------------------------------------------------------------------------------------
// --wrap

fn wrap(
    units: &UnitSet,
    sources: &BTreeMap<UnitName, String>,
    options: &Options,
    warnings: &mut Warnings,
) -> (ConfigMap, PodSpec) {
    let config_map_name = format!("{}-units", options.name);
    // ConfigMap keys are `[-._a-zA-Z0-9]+`; a unit name may also hold `@`, so such a file gets
    // a key of its own and an `items` entry that gives it its real file name.
    let key_of = |name: &UnitName| format!("{}.toml", name.as_str().replace('@', "_at_"));
    let data: BTreeMap<String, String> = sources
        .iter()
        .map(|(name, text)| (key_of(name), text.clone()))
        .collect();
    let renamed = sources.keys().any(|n| n.as_str().contains('@'));
    let items = renamed.then(|| {
        sources
            .keys()
            .map(|name| KeyToPath {
                key: key_of(name),
                path: format!("{name}.toml"),
                mode: None,
            })
            .collect()
    });
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name.clone()),
            labels: Some(labels(options)),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };

    let command = vec![
        "corral".to_owned(),
        "run".to_owned(),
        "--probe-listen".to_owned(),
        format!("0.0.0.0:{PROBE_PORT}"),
        UNITS_MOUNT.to_owned(),
    ];

    let needs_privilege: Vec<&str> = units
        .values()
        .filter(|u| asks_for_kernel_features(u))
        .map(|u| u.name.as_str())
        .collect();
    if !options.privileged && !needs_privilege.is_empty() {
        warnings.global(
            "privileged",
            format!(
                "{} set limits, OOM or namespace keys; corral enforces them only where the \
                 container may write its cgroups and create namespaces (--privileged), and \
                 otherwise supervises without them (docs/kubernetes.md, \"Writable cgroups\")",
                needs_privilege.join(", ")
            ),
        );
    }

    let container = Container {
        name: "corral".to_owned(),
        image: Some(options.image.clone()),
        command: Some(command),
        ports: Some(vec![ContainerPort {
            name: Some(PROBE_PORT_NAME.to_owned()),
            container_port: i32::from(PROBE_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Until corral listens (it binds before it starts any unit), liveness is not asked:
        // 30 s for a start that reads the units and empties what a previous corral left.
        startup_probe: Some(probe_endpoint("/livez", 1, 30)),
        liveness_probe: Some(probe_endpoint("/livez", 10, 3)),
        readiness_probe: Some(probe_endpoint("/readyz", 5, 3)),
        resources: wrapped_resources(units, warnings),
        security_context: options.privileged.then(|| SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "units".to_owned(),
            mount_path: UNITS_MOUNT.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let grace = shutdown_chain(units) + CORRAL_SHUTDOWN_TIMEOUT + GRACE_MARGIN;
    let spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Always".to_owned()),
        termination_grace_period_seconds: Some(secs_i64(grace)),
        volumes: Some(vec![Volume {
            name: "units".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name,
                items,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    (config_map, spec)
}

/// A unit whose keys need cgroups or namespaces that an unprivileged container may not make.
fn asks_for_kernel_features(unit: &Unit) -> bool {
    *unit.resources != Default::default()
        || *unit.oom != Default::default()
        || *unit.namespaces != Default::default()
        || unit.sandbox.read_only_paths.len() + usize::from(unit.sandbox.private_tmp) > 0
}

/// The wrapped container's limits: what the units may use together. A slice bounds its members
/// by its own limit, or by their sum where that is smaller; one unbounded member at the top
/// leaves the container unbounded, and is named.
fn wrapped_resources(units: &UnitSet, warnings: &mut Warnings) -> Option<ResourceRequirements> {
    let started = started_units(units);
    let members = |slice: Option<&UnitName>| -> Vec<&Unit> {
        units
            .values()
            .filter(|u| u.slice.as_ref() == slice)
            .filter(|u| u.kind == UnitKind::Slice || started.contains(&u.name))
            .collect()
    };
    let mut limits = BTreeMap::new();
    type Limit = fn(&Unit) -> Option<u64>;
    let memory: Limit = |u| u.resources.memory_max.and_then(byte_limit);
    let cpu: Limit = |u| u.resources.cpu_quota.map(|p| u64::from(p.0) * 10);
    for (resource, limit, key) in [("memory", memory, "memory-max"), ("cpu", cpu, "cpu-quota")] {
        let mut unbounded = Vec::new();
        let total = bound(None, &members, limit, &mut unbounded);
        match total {
            Some(total) => {
                let quantity = match resource {
                    "memory" => binary_size(total + CORRAL_MEMORY, ["Ti", "Gi", "Mi", "Ki"]),
                    _ => millicores(total),
                };
                limits.insert(resource.to_owned(), Quantity(quantity));
            }
            None => warnings.global(
                format!("resources.{key}"),
                format!(
                    "no {resource} limit for the pod: {} {} no {key} and no bounded slice",
                    unbounded.join(", "),
                    if unbounded.len() == 1 { "has" } else { "have" }
                ),
            ),
        }
    }
    (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits),
        ..ResourceRequirements::default()
    })
}

/// What the members of `slice` (the root for `None`) may use together; `None` is unbounded,
/// and `unbounded` then names the units that make it so.
fn bound<'a>(
    slice: Option<&UnitName>,
    members: &dyn Fn(Option<&UnitName>) -> Vec<&'a Unit>,
    limit: fn(&Unit) -> Option<u64>,
    unbounded: &mut Vec<String>,
) -> Option<u64> {
    let mut sum = Some(0u64);
    for unit in members(slice) {
        let own = limit(unit);
        let of_unit = match unit.kind {
            UnitKind::Slice => {
                let mut inner = Vec::new();
                let below = bound(Some(&unit.name), members, limit, &mut inner);
                match (own, below) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (Some(a), None) => Some(a),
                    (None, b) => {
                        unbounded.extend(inner);
                        b
                    }
                }
            }
            UnitKind::Service | UnitKind::Oneshot => {
                if own.is_none() {
                    unbounded.push(unit.name.to_string());
                }
                own
            }
        };
        sum = sum.zip(of_unit).map(|(a, b)| a.saturating_add(b));
    }
    sum
}

fn millicores(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(ceil_secs(d)).unwrap_or(i64::MAX)
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(ceil_secs(d)).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------------------------
// --split

/// Where a unit's container goes in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A oneshot: an init container, run to completion before what comes after it.
    Init,
    /// A service another unit waits for: a native sidecar (an init container that keeps
    /// running, `restartPolicy: Always`), gated by its startup probe.
    Sidecar,
    /// A service nothing waits for: a regular container.
    Main,
}

fn split(units: &UnitSet, options: &Options, warnings: &mut Warnings) -> PodSpec {
    let started = started_units(units);
    for unit in units.values() {
        if unit.kind != UnitKind::Slice && !started.contains(&unit.name) {
            warnings.unit(
                &unit.name,
                "enabled",
                "disabled and required by no enabled unit: not exported (a pod starts every container)",
            );
        }
        if unit.kind == UnitKind::Slice && *unit.resources != Default::default() {
            warnings.unit(
                &unit.name,
                "resources",
                "a slice's limits have no place in a pod (containers do not nest); dropped",
            );
        }
    }
    let mut graph = DepGraph::new();
    let mut depended_on = BTreeSet::new();
    for name in &started {
        graph.add_node(name.clone());
        if let Some(unit) = units.get(name) {
            for dep in start_deps(unit, units) {
                graph.add_edge(name.clone(), dep.clone());
                depended_on.insert(dep.clone());
            }
        }
    }
    let order = graph.topological_order().unwrap_or_default();
    let mut roles: BTreeMap<&UnitName, Role> = order
        .iter()
        .filter_map(|n| units.get(n))
        .map(|u| {
            let role = match u.kind {
                UnitKind::Oneshot => Role::Init,
                _ if depended_on.contains(&u.name) => Role::Sidecar,
                _ => Role::Main,
            };
            (&u.name, role)
        })
        .collect();
    // A pod needs a regular container. With none, the last unit in order (a oneshot: a
    // sidecar always has a dependent after it) runs as one, to completion.
    if !roles.values().any(|r| *r == Role::Main)
        && let Some(last) = order.last()
    {
        roles.insert(last, Role::Main);
    }
    let role = |unit: &Unit| roles.get(&unit.name).copied().unwrap_or(Role::Main);

    let names = container_names(&order, warnings);
    let mains: Vec<&Unit> = order
        .iter()
        .filter_map(|n| units.get(n))
        .filter(|u| role(u) == Role::Main)
        .collect();
    let restart_policy = pod_restart_policy(&mains, options.workload);

    let mut init_containers = Vec::new();
    let mut containers = Vec::new();
    let mut volumes = Vec::new();
    let mut user_namespaces = Vec::new();
    for name in &order {
        let Some(unit) = units.get(name) else {
            continue;
        };
        let container_name = names.get(name).cloned().unwrap_or_else(|| name.to_string());
        let role = role(unit);
        restart_warnings(unit, role, restart_policy, warnings);
        let (container, tmp) = container(unit, role, &container_name, options, warnings);
        if let Some(tmp) = tmp {
            volumes.push(tmp);
        }
        if unit.namespaces.user {
            user_namespaces.push(unit.name.as_str());
        }
        match role {
            Role::Init | Role::Sidecar => init_containers.push(container),
            Role::Main => containers.push(container),
        }
    }
    for name in &order {
        let Some(unit) = units.get(name) else {
            continue;
        };
        let sidecars: Vec<&str> = unit
            .requires
            .iter()
            .filter(|r| units.get(*r).is_some_and(|u| role(u) == Role::Sidecar))
            .map(UnitName::as_str)
            .collect();
        if !sidecars.is_empty() {
            warnings.unit(
                name,
                "requires",
                format!(
                    "the kubelet restarts a failed sidecar ({}) without stopping what requires it; \
                     only the start order is kept",
                    sidecars.join(", ")
                ),
            );
        }
    }
    chain_warning(&order, &graph, &|n| units.get(n).map(role), warnings);
    if !user_namespaces.is_empty() && user_namespaces.len() < started.len() {
        warnings.global(
            "namespaces.user",
            format!(
                "{} asked for a user namespace; Kubernetes has one per pod (hostUsers: false), \
                 so every container gets it",
                user_namespaces.join(", ")
            ),
        );
    }
    PodSpec {
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers,
        restart_policy: Some(restart_policy.to_owned()),
        termination_grace_period_seconds: Some(secs_i64(shutdown_chain(units))),
        host_users: (!user_namespaces.is_empty()).then_some(false),
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..PodSpec::default()
    }
}

/// A DNS-1123 label per unit, as Kubernetes names containers; a unit whose name had to change
/// is told so.
fn container_names(order: &[UnitName], warnings: &mut Warnings) -> BTreeMap<UnitName, String> {
    let mut taken = BTreeSet::new();
    let mut names = BTreeMap::new();
    for name in order {
        let mut label: String = name
            .as_str()
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-') => c,
                _ => '-',
            })
            .collect();
        label = label.trim_matches('-').chars().take(56).collect();
        label = label.trim_end_matches('-').to_owned();
        if label.is_empty() {
            label = "unit".to_owned();
        }
        let base = label.clone();
        let mut n = 2;
        while !taken.insert(label.clone()) {
            label = format!("{base}-{n}");
            n += 1;
        }
        if label != name.as_str() {
            warnings.unit(
                name,
                "name",
                format!("its container is named `{label}` (container names are DNS labels)"),
            );
        }
        names.insert(name.clone(), label);
    }
    names
}

/// The pod's one restart policy, from what its regular containers ask for (a Deployment's pod
/// must restart always).
fn pod_restart_policy(mains: &[&Unit], workload: Workload) -> &'static str {
    if workload == Workload::Deployment
        || mains.is_empty()
        || mains
            .iter()
            .any(|u| u.restart.policy == RestartPolicy::Always)
    {
        "Always"
    } else if mains
        .iter()
        .any(|u| u.restart.policy != RestartPolicy::Never)
    {
        "OnFailure"
    } else {
        "Never"
    }
}

fn restart_warnings(unit: &Unit, role: Role, pod_policy: &str, warnings: &mut Warnings) {
    let policy = unit.restart.policy;
    let asked = match policy {
        RestartPolicy::Never => "Never",
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure | RestartPolicy::OnAbnormal | RestartPolicy::OnOom => "OnFailure",
    };
    let kebab = match policy {
        RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::OnAbnormal => "on-abnormal",
        RestartPolicy::OnOom => "on-oom",
        RestartPolicy::Always => "always",
    };
    match (role, policy) {
        (_, RestartPolicy::OnOom) => warnings.unit(
            &unit.name,
            "restart.policy",
            "on-oom: Kubernetes cannot restart only after an OOM kill; it restarts after any failure",
        ),
        (_, RestartPolicy::OnAbnormal) => warnings.unit(
            &unit.name,
            "restart.policy",
            "on-abnormal: Kubernetes cannot tell a signal from an exit code; it restarts after any failure",
        ),
        _ => {}
    }
    match role {
        Role::Sidecar if policy != RestartPolicy::Always => warnings.unit(
            &unit.name,
            "restart.policy",
            format!("{kebab}: a sidecar is restarted whenever it ends, whatever the policy"),
        ),
        Role::Init | Role::Main if asked != pod_policy => warnings.unit(
            &unit.name,
            "restart.policy",
            format!(
                "{kebab}: the pod has one restart policy for its containers, here {pod_policy}"
            ),
        ),
        _ => {}
    }
    if !super::restart_tuning_is_default(unit) {
        warnings.unit(
            &unit.name,
            "restart",
            "delay, max-delay, reset-after and the start limit have no equivalent: the kubelet's \
             back-off is fixed (10s, doubling to 5m, reset after 10m running)",
        );
    }
    if unit.restart.success_exit_codes != [0] {
        warnings.unit(
            &unit.name,
            "restart.success-exit-codes",
            "Kubernetes counts only exit code 0 as a success",
        );
    }
}

/// One warning naming every container that Kubernetes makes wait for more than its unit did:
/// init containers run one at a time in list order, and regular containers start after all.
fn chain_warning(
    order: &[UnitName],
    graph: &DepGraph<UnitName>,
    role: &dyn Fn(&UnitName) -> Option<Role>,
    warnings: &mut Warnings,
) {
    let mut before: Vec<&UnitName> = Vec::new();
    let mut extra_waits = Vec::new();
    let inits: Vec<&UnitName> = order
        .iter()
        .filter(|n| matches!(role(n), Some(Role::Init | Role::Sidecar)))
        .collect();
    for name in order {
        let waits_for = graph.dependencies(name);
        let forced: Vec<&UnitName> = match role(name) {
            Some(Role::Init | Role::Sidecar) => before.clone(),
            _ => inits.clone(),
        };
        let extra: Vec<&str> = forced
            .iter()
            .filter(|f| !waits_for.contains(**f))
            .map(|f| f.as_str())
            .collect();
        if !extra.is_empty() {
            extra_waits.push(format!("{name} also waits for {}", extra.join(", ")));
        }
        if matches!(role(name), Some(Role::Init | Role::Sidecar)) {
            before.push(name);
        }
    }
    if !extra_waits.is_empty() {
        warnings.global(
            "after",
            format!(
                "the dependency graph is not a chain: a pod starts its init containers one at a \
                 time and its other containers after all of them, so {}",
                extra_waits.join("; ")
            ),
        );
    }
}

fn container(
    unit: &Unit,
    role: Role,
    name: &str,
    options: &Options,
    warnings: &mut Warnings,
) -> (Container, Option<Volume>) {
    let mut c = Container {
        name: name.to_owned(),
        image: Some(options.image.clone()),
        restart_policy: (role == Role::Sidecar).then(|| "Always".to_owned()),
        ..Container::default()
    };
    if let Some(exec) = &unit.exec {
        c.command = Some(exec.command.clone());
        c.working_dir = exec.working_dir.as_ref().map(|p| p.display().to_string());
        c.env = (!exec.env.is_empty()).then(|| {
            exec.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..EnvVar::default()
                })
                .collect()
        });
    }
    c.resources = resources(unit, warnings);
    probes(unit, role, &mut c, warnings);
    if unit.stop.signal.0 != crate::core::signal::Signal::SIGTERM {
        warnings.unit(
            &unit.name,
            "stop.signal",
            format!(
                "{}: the kubelet stops a container with the image's STOPSIGNAL (usually SIGTERM)",
                unit.stop.signal.0.as_str()
            ),
        );
    }
    if let Some(adj) = unit.oom.score_adjust {
        warnings.unit(
            &unit.name,
            "oom.score-adjust",
            format!("{adj}: the kubelet sets oom_score_adj from the pod's QoS class"),
        );
    }
    if unit.oom.pressure.is_some() {
        warnings.unit(
            &unit.name,
            "oom.action",
            "Kubernetes has no action on a memory threshold before the OOM killer: the \
             container is OOM-killed at its memory limit",
        );
    }
    namespace_warnings(unit, warnings);
    log_file_warning(unit, warnings);
    let (security, tmp_volume) = security(unit, name, warnings);
    c.security_context = security;
    if let Some(volume) = &tmp_volume {
        c.volume_mounts = Some(vec![VolumeMount {
            name: volume.name.clone(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]);
    }
    (c, tmp_volume)
}

fn resources(unit: &Unit, warnings: &mut Warnings) -> Option<ResourceRequirements> {
    let r = &unit.resources;
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    let limit_m = r.cpu_quota.map(|p| u64::from(p.0) * 10);
    if let Some(m) = limit_m {
        limits.insert("cpu".to_owned(), Quantity(millicores(m)));
    }
    if r.cpu_quota_period
        .is_some_and(|p| p != Duration::from_millis(100))
    {
        warnings.unit(
            &unit.name,
            "resources.cpu-quota-period",
            "Kubernetes uses the node's CFS period (100ms) for every container",
        );
    }
    if let Some(weight) = r.cpu_weight {
        // The kubelet writes cpu.shares = milliCPU * 1024 / 1000 from requests.cpu; corral
        // writes weight * 1024 / 100, so weight w is a request of w * 10 millicores.
        let mut m = u64::from(weight) * 10;
        if let Some(limit) = limit_m.filter(|l| m > *l) {
            warnings.unit(
                &unit.name,
                "resources.cpu-weight",
                format!(
                    "{weight} is a CPU request of {} above the limit: requested {} instead",
                    millicores(m),
                    millicores(limit)
                ),
            );
            m = limit;
        }
        requests.insert("cpu".to_owned(), Quantity(millicores(m)));
        warnings.unit(
            &unit.name,
            "resources.cpu-weight",
            format!(
                "{weight}: written as requests.cpu {} (the same cpu.shares), which the scheduler \
                 also reserves on a node",
                millicores(m)
            ),
        );
    }
    if let Some(ByteLimit::Bytes(n)) = r.memory_max {
        limits.insert(
            "memory".to_owned(),
            Quantity(binary_size(n, ["Ti", "Gi", "Mi", "Ki"])),
        );
    }
    let unsupported = [
        (
            r.allowed_cpus.is_some(),
            "allowed-cpus",
            "Kubernetes pins CPUs only through the node's static CPU manager policy",
        ),
        (
            r.memory_high.is_some(),
            "memory-high",
            "Kubernetes has no throttling threshold below the memory limit",
        ),
        (
            r.memory_swap_max.is_some(),
            "memory-swap-max",
            "a container's swap is set by the node's swap behavior, not per container",
        ),
        (
            r.pids_max.is_some(),
            "pids-max",
            "Kubernetes limits pids per pod on the node (the kubelet's podPidsLimit), not per container",
        ),
        (
            r.io_weight.is_some(),
            "io-weight",
            "Kubernetes has no IO weight",
        ),
        (
            !r.io.is_empty(),
            "io",
            "Kubernetes has no IO bandwidth or IOPS limits",
        ),
    ];
    for (set, key, why) in unsupported {
        if set {
            warnings.unit(
                &unit.name,
                format!("resources.{key}"),
                format!("{why}; dropped"),
            );
        }
    }
    (!limits.is_empty() || !requests.is_empty()).then(|| ResourceRequirements {
        limits: (!limits.is_empty()).then_some(limits),
        requests: (!requests.is_empty()).then_some(requests),
        ..ResourceRequirements::default()
    })
}

/// A probe's handler and timing as the kubelet runs it.
fn probe_of(config: &ProbeConfig, unit: &Unit, warnings: &mut Warnings) -> Probe {
    let mut p = Probe {
        period_seconds: Some(secs_i32(config.interval)),
        timeout_seconds: Some(secs_i32(config.timeout)),
        ..Probe::default()
    };
    let host_of = |ip: std::net::IpAddr, warnings: &mut Warnings| {
        if ip.is_loopback() {
            warnings.unit(
                &unit.name,
                "health",
                format!(
                    "the kubelet probes the pod's IP, not {ip}: the server must listen there too"
                ),
            );
            None
        } else {
            Some(ip.to_string())
        }
    };
    match &config.probe {
        UnitProbe::Exec(argv) => {
            p.exec = Some(ExecAction {
                command: Some(argv.clone()),
            })
        }
        UnitProbe::Http(target) => {
            p.http_get = Some(HTTPGetAction {
                host: host_of(target.addr.ip(), warnings),
                path: Some(target.path.clone()),
                port: IntOrString::Int(i32::from(target.addr.port())),
                ..HTTPGetAction::default()
            })
        }
        UnitProbe::Tcp(addr) => {
            p.tcp_socket = Some(TCPSocketAction {
                host: host_of(addr.ip(), warnings),
                port: IntOrString::Int(i32::from(addr.port())),
            })
        }
    }
    let whole = |d: Duration| d.subsec_nanos() == 0;
    if !whole(config.interval) || !whole(config.timeout) || !whole(config.initial_delay) {
        warnings.unit(
            &unit.name,
            "health",
            "Kubernetes counts probe times in whole seconds: rounded up",
        );
    }
    p
}

/// `[health]` and readiness: a startup probe (readiness while starting, bounded by
/// start-timeout, and the gate a sidecar's dependents wait on) and a liveness probe (the
/// probe of a running unit).
fn probes(unit: &Unit, role: Role, c: &mut Container, warnings: &mut Warnings) {
    let probe = unit.health.as_ref().and_then(|h| h.probe.as_ref());
    if let Some(config) = probe {
        let handler = probe_of(config, unit, warnings);
        let window = unit
            .readiness
            .start_timeout
            .saturating_sub(config.initial_delay);
        let tries = ceil_secs(window)
            .div_ceil(ceil_secs(config.interval).max(1))
            .max(1);
        c.startup_probe = Some(Probe {
            initial_delay_seconds: (!config.initial_delay.is_zero())
                .then(|| secs_i32(config.initial_delay)),
            failure_threshold: Some(i32::try_from(tries).unwrap_or(i32::MAX)),
            ..handler.clone()
        });
        c.liveness_probe = Some(Probe {
            failure_threshold: Some(i32::try_from(config.failure_threshold).unwrap_or(i32::MAX)),
            ..handler
        });
        if config.success_threshold > 1 {
            warnings.unit(
                &unit.name,
                "health.success-threshold",
                "a startup probe passes on its first success (Kubernetes requires 1)",
            );
        }
    }
    if unit.readiness.mode == ReadyMode::Notify {
        let consequence = match (role, probe.is_some()) {
            (_, true) => "its startup probe alone decides",
            (Role::Sidecar, false) => {
                "what waits for it starts as soon as it runs; add a [health] probe"
            }
            _ => "it counts as started once it runs",
        };
        warnings.unit(
            &unit.name,
            "exec.ready",
            format!("notify: Kubernetes has no sd_notify, {consequence}"),
        );
    }
    if unit.readiness.mode == ReadyMode::LogLine {
        warnings.unit(
            &unit.name,
            "exec.ready",
            "log-line: Kubernetes has no readiness by output line; add a [health] probe",
        );
    }
    if let Some(watchdog) = unit.health.as_ref().and_then(|h| h.watchdog) {
        warnings.unit(
            &unit.name,
            "health.watchdog",
            format!(
                "{}: Kubernetes has no watchdog; a liveness probe is the nearest",
                humantime::format_duration(watchdog)
            ),
        );
    }
}

/// `[logs] file`: Kubernetes keeps containers' output itself (`kubectl logs`, rotated by the
/// kubelet's `containerLogMaxSize`).
fn log_file_warning(unit: &Unit, warnings: &mut Warnings) {
    if unit.logs.file.is_some() {
        warnings.unit(
            &unit.name,
            "logs.file",
            "not exported: the kubelet keeps the container's output (kubectl logs) and rotates \
             it (containerLogMaxSize, containerLogMaxFiles)",
        );
    }
}

fn namespace_warnings(unit: &Unit, warnings: &mut Warnings) {
    let ns = &unit.namespaces;
    let unsupported = [
        (
            ns.net,
            "net",
            "the containers of a pod share one network namespace",
        ),
        (
            ns.ipc,
            "ipc",
            "the containers of a pod share one IPC namespace",
        ),
        (
            ns.uts || ns.hostname.is_some(),
            "uts",
            "the containers of a pod share one host name (the pod's spec.hostname)",
        ),
        (
            !ns.uid_map.is_empty() || !ns.gid_map.is_empty(),
            "uid-map",
            "the kubelet chooses a user namespace's id maps itself",
        ),
    ];
    for (set, key, why) in unsupported {
        if set {
            warnings.unit(
                &unit.name,
                format!("namespaces.{key}"),
                format!("{why}; dropped"),
            );
        }
    }
}

/// `[sandbox]` and the unit's user as the container's securityContext, and `private-tmp` as
/// a memory-backed emptyDir on /tmp (a fresh tmpfs per container).
fn security(
    unit: &Unit,
    name: &str,
    warnings: &mut Warnings,
) -> (Option<SecurityContext>, Option<Volume>) {
    let sb = &unit.sandbox;
    let mut sc = SecurityContext::default();
    if let Some(user) = unit.exec.as_ref().and_then(|e| e.user.as_ref()) {
        sc.run_as_user = Some(i64::from(user.uid));
        sc.run_as_group = Some(i64::from(user.gid));
    }
    if sb.no_new_privileges {
        sc.allow_privilege_escalation = Some(false);
    }
    if let Some(caps) = &sb.capabilities {
        sc.capabilities = Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: (!caps.is_empty()).then(|| {
                caps.iter()
                    .filter_map(|c| c.name())
                    .map(|n| n.trim_start_matches("CAP_").to_owned())
                    .collect()
            }),
        });
        let non_root = unit
            .exec
            .as_ref()
            .and_then(|e| e.user.as_ref())
            .is_some_and(|u| u.uid != 0);
        if non_root && !caps.is_empty() {
            warnings.unit(
                &unit.name,
                "sandbox.capabilities",
                "Kubernetes does not raise added capabilities as ambient ones, so a non-root \
                 user has them only through file capabilities",
            );
        }
    }
    let mut other_paths = Vec::new();
    for path in &sb.read_only_paths {
        if path.as_os_str() == "/" {
            sc.read_only_root_filesystem = Some(true);
        } else {
            other_paths.push(path.display().to_string());
        }
    }
    if !other_paths.is_empty() {
        warnings.unit(
            &unit.name,
            "sandbox.read-only-paths",
            format!(
                "{}: Kubernetes makes only the whole root file system read-only \
                 (readOnlyRootFilesystem) or a mounted volume; dropped",
                other_paths.join(", ")
            ),
        );
    }
    let tmp = sb.private_tmp.then(|| Volume {
        name: format!("{name}-tmp"),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    let sc = (sc != SecurityContext::default()).then_some(sc);
    (sc, tmp)
}
