//! `--probe-listen`: the kubelet's probes over the shared HTTP room (http.rs): `GET /livez`
//! (the loop turns: this answer is written by it), `GET /readyz` (every enabled unit is
//! ready) and `GET /readyz/UNIT`, each with a short JSON body (docs/kubernetes.md, "Probes").

use std::time::Duration;

use crate::unit::UnitName;

use super::Daemon;
use super::http::{Bounds, Incoming, request_line, response, too_large};

/// Connections at once: beyond this a new one closes the oldest still sending its request.
pub const MAX_CLIENTS: usize = 64;
/// A connection has this long to send its request and take its answer: the kubelet's own
/// default probe timeout is 1 s, so a slower peer is not the kubelet.
pub const TIMEOUT: Duration = Duration::from_secs(2);

pub const BOUNDS: Bounds = Bounds {
    max_clients: MAX_CLIENTS,
    timeout: TIMEOUT,
};

/// What a probe request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Live,
    Ready,
    /// `/readyz/NAME`, NAME as sent (it may be no unit name at all).
    ReadyUnit(String),
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a complete request head; the query string is ignored (`/readyz?verbose`).
pub fn route(head: &[u8]) -> Route {
    let Some((method, path)) = request_line(head) else {
        return Route::BadRequest;
    };
    let route = match path.as_str() {
        "/livez" => Route::Live,
        "/readyz" => Route::Ready,
        other => match other.strip_prefix("/readyz/") {
            Some(name) if !name.is_empty() => Route::ReadyUnit(name.to_owned()),
            _ => Route::NotFound,
        },
    };
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    route
}

/// `{"ready":true}`, or `{"ready":false,"waiting":["db","web"]}`.
pub fn ready_body(waiting: &[UnitName]) -> String {
    let names: Vec<&str> = waiting.iter().map(UnitName::as_str).collect();
    let body = if names.is_empty() {
        serde_json::json!({ "ready": true })
    } else {
        serde_json::json!({ "ready": false, "waiting": names })
    };
    format!("{body}\n")
}

/// `{"unit":"web","ready":false,"state":"failed: exited with code 1"}`.
pub fn unit_body(name: &UnitName, ready: bool, state: &str) -> String {
    let body = serde_json::json!({ "unit": name.as_str(), "ready": ready, "state": state });
    format!("{body}\n")
}

/// `{"error":"..."}`, the text JSON-escaped (it may quote what the peer sent).
pub fn error_body(message: &str) -> String {
    format!("{}\n", serde_json::json!({ "error": message }))
}

fn json(status: &str, body: &str) -> Vec<u8> {
    response(
        status,
        "Cache-Control: no-store\r\n",
        "application/json",
        body,
    )
}

fn verdict(ready: bool) -> &'static str {
    if ready {
        "200 OK"
    } else {
        "503 Service Unavailable"
    }
}

impl Daemon {
    /// The answer to a complete request on the probe listener.
    pub(super) fn probe_answer(&self, incoming: &Incoming) -> Vec<u8> {
        let Incoming::Head(head) = incoming else {
            return too_large();
        };
        match route(head) {
            Route::Live => json("200 OK", "{\"live\":true}\n"),
            Route::Ready => {
                let waiting = self.sup.not_ready(&[]);
                json(verdict(waiting.is_empty()), &ready_body(&waiting))
            }
            Route::ReadyUnit(raw) => {
                let known = UnitName::new(&raw).and_then(|n| Some((self.sup.is_ready(&n)?, n)));
                match known {
                    Some((ready, name)) => {
                        let state = if ready {
                            self.sup
                                .get(&name)
                                .map_or("ready", |(_, rt)| rt.state.as_str())
                                .to_owned()
                        } else {
                            self.sup.not_ready_because(&name)
                        };
                        json(verdict(ready), &unit_body(&name, ready, &state))
                    }
                    None => json(
                        "404 Not Found",
                        &error_body(&format!("no unit named {raw:?}")),
                    ),
                }
            }
            Route::NotFound => json(
                "404 Not Found",
                &error_body("served here: /livez, /readyz, /readyz/UNIT"),
            ),
            Route::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "application/json",
                &error_body("only GET is served here"),
            ),
            Route::BadRequest => json("400 Bad Request", &error_body("bad request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_routes() {
        let table: [(&str, Route); 11] = [
            ("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", Route::Live),
            ("GET /readyz HTTP/1.0\r\n\r\n", Route::Ready),
            ("GET /readyz?verbose HTTP/1.1\r\n\r\n", Route::Ready),
            (
                "GET /readyz/web HTTP/1.1\r\n\r\n",
                Route::ReadyUnit("web".into()),
            ),
            (
                "GET /readyz/a%22b HTTP/1.1\r\n\r\n",
                Route::ReadyUnit("a%22b".into()),
            ),
            ("GET /readyz/ HTTP/1.1\r\n\r\n", Route::NotFound),
            ("GET /healthz HTTP/1.1\r\n\r\n", Route::NotFound),
            ("POST /readyz HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            ("HEAD /livez HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            ("GET /livez\r\n\r\n", Route::BadRequest),
            ("\u{1}\u{2} garbage\r\n\r\n", Route::BadRequest),
        ];
        for (head, want) in table {
            assert_eq!(route(head.as_bytes()), want, "{head:?}");
        }
    }

    #[test]
    fn bodies_are_one_line_of_json_with_names_escaped() {
        let names = |list: &[&str]| -> Vec<UnitName> {
            list.iter().filter_map(|n| UnitName::new(n)).collect()
        };
        assert_eq!(ready_body(&[]), "{\"ready\":true}\n");
        assert_eq!(
            ready_body(&names(&["db", "web"])),
            "{\"ready\":false,\"waiting\":[\"db\",\"web\"]}\n"
        );
        let web = &names(&["web"])[0];
        assert_eq!(
            unit_body(web, true, "running"),
            "{\"ready\":true,\"state\":\"running\",\"unit\":\"web\"}\n"
        );
        let body = error_body("no unit named \"a\\\"b\u{1b}\"");
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["error"], "no unit named \"a\\\"b\u{1b}\"");
        assert!(!body.trim_end().contains('\n') && !body.contains('\u{1b}'));
    }
}
