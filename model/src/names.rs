//! Metric and attribute names that the agent exports and the collector reads (docs/ARCHITECTURE.md, "The agent").

/// Inbound-side request duration histogram (seconds), recorded by the callee's agent.
pub const SERVER_DURATION: &str = "http.server.request.duration";
/// Outbound-side request duration histogram (seconds), recorded by the caller's agent.
pub const CLIENT_DURATION: &str = "http.client.request.duration";
/// Monotonic sum: retries the caller's agent made on an edge.
pub const CLIENT_RETRIES: &str = "meshlens.client.retries";
/// Monotonic sum: attempts or requests that timed out at the caller's agent.
pub const CLIENT_TIMEOUTS: &str = "meshlens.client.timeouts";

/// Prefix of the source workload attributes (`.namespace`, `.app`, `.version`).
pub const SOURCE_PREFIX: &str = "meshlens.source.";
/// Prefix of the destination workload attributes (`.namespace`, `.app`, `.version`).
pub const DESTINATION_PREFIX: &str = "meshlens.destination.";
/// Boolean attribute: the hop was mutually authenticated TLS.
pub const MTLS: &str = "meshlens.mtls";
/// Boolean attribute on client-side points: whether the request reached the callee at all. `false`
/// for connect failures, requests the caller's agent could not route, and injected aborts, which the
/// callee's agent never counts; the collector then counts the caller's report.
pub const REACHED: &str = "meshlens.reached";
/// HTTP status code attribute (semantic conventions).
pub const HTTP_STATUS: &str = "http.response.status_code";
/// Older HTTP status code attribute, still sent by many SDKs.
pub const HTTP_STATUS_OLD: &str = "http.status_code";
/// Error type attribute (semantic conventions); set without a status code when there was no response.
pub const ERROR_TYPE: &str = "error.type";
/// gRPC status code attribute.
pub const GRPC_STATUS: &str = "rpc.grpc.status_code";

/// Per-route request duration histogram (seconds), recorded by the caller's agent once per request
/// (all attempts included) with [`HTTP_ROUTE`], [`SUCCESS`] and the source and destination
/// (`namespace`, `app`) attributes. Kept apart from [`CLIENT_DURATION`] so a request is not counted
/// on its edge twice.
pub const ROUTE_DURATION: &str = "meshlens.route.request.duration";
/// Monotonic sum: retries the caller's agent sent on a route, with the attributes of [`ROUTE_DURATION`]
/// but [`SUCCESS`].
pub const ROUTE_RETRIES: &str = "meshlens.route.retries";
/// The route's name (semantic conventions' `http.route`); `[default]` for requests no declared route fits.
pub const HTTP_ROUTE: &str = "http.route";
/// Boolean attribute on route points: whether the requests succeeded (not 5xx, a response, no gRPC
/// server-fault code).
pub const SUCCESS: &str = "meshlens.success";
