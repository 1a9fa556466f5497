//! What the admin endpoint answers: the routes, and the stats rendered
//! with the server's drain state.

use super::http::Response;
use crate::{
    server::DrainStatus,
    stats::{PrometheusOptions, ServerState, Stats},
};

/// What the endpoint renders.
pub(super) struct Page {
    pub(super) stats: Stats,
    pub(super) drain: Option<DrainStatus>,
    pub(super) prometheus: PrometheusOptions,
}

impl Page {
    pub(super) fn respond(&self, method: &str, path: &str) -> Response {
        let with_body = match method {
            "GET" => true,
            "HEAD" => false,
            _ => return Response::text("405 Method Not Allowed", "only GET and HEAD\n"),
        };
        let path = path.split('?').next().unwrap_or_default();
        let response = match path {
            "/stats" => Response::text("200 OK", self.envoy_text()),
            "/stats/prometheus" => Response {
                content_type: "text/plain; version=0.0.4",
                ..Response::text("200 OK", self.prometheus())
            },
            "/ready" if self.draining() => Response::text("503 Service Unavailable", "DRAINING\n"),
            "/ready" => Response::text("200 OK", "LIVE\n"),
            _ => Response::text("404 Not Found", "try /stats, /stats/prometheus or /ready\n"),
        };
        Response {
            with_body,
            ..response
        }
    }

    fn draining(&self) -> bool {
        self.drain.as_ref().is_some_and(DrainStatus::is_draining)
    }

    /// The server's drain state, if known.
    fn server_state(&self) -> Option<ServerState> {
        let drain = self.drain.as_ref()?;
        Some(ServerState {
            draining: drain.is_draining(),
            connections_open: drain.connections_open(),
            drain_seconds_left: drain.time_left().unwrap_or_default().as_secs_f64(),
        })
    }

    fn envoy_text(&self) -> String {
        let server = self.server_state();
        self.stats.snapshot().render_envoy(server.as_ref())
    }

    fn prometheus(&self) -> String {
        let server = self.server_state();
        (self.stats.snapshot()).render_prometheus(&self.prometheus, server.as_ref())
    }
}
