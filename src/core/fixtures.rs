//! Units built in code for the core's tests, without parsing files.

use std::path::PathBuf;
use std::time::Duration;

use crate::unit::*;

pub fn service(name: &str) -> Unit {
    unit(name, UnitKind::Service)
}

pub fn oneshot(name: &str) -> Unit {
    unit(name, UnitKind::Oneshot)
}

pub fn name(n: &str) -> UnitName {
    UnitName::new(n).expect("valid test name")
}

pub fn unit(n: &str, kind: UnitKind) -> Unit {
    Unit {
        name: name(n),
        kind,
        source: PathBuf::from(format!("/units/{n}.toml")),
        description: None,
        slice: None,
        after: vec![],
        requires: vec![],
        enabled: true,
        exec: (kind != UnitKind::Slice).then(|| Exec {
            command: vec!["true".into()],
            working_dir: None,
            env: Default::default(),
            env_files: Vec::new(),
            user: None,
        }),
        restart: RestartConfig {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RestartConfig::default_for(kind)
        }
        .into(),
        stop: StopConfig::default(),
        resources: Default::default(),
        oom: Default::default(),
        namespaces: Default::default(),
        sandbox: Default::default(),
        readiness: Default::default(),
        health: None,
        logs: Default::default(),
    }
}
