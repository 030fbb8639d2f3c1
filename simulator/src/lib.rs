//! meshlens simulator: replays traffic through a model of the mesh under the agent's policies
//! (split, whole-request timeout, retries with per-try timeout, backoff and budget) and says what
//! would happen. It owns the scenario format ([`scenario`]), the discrete-event engine
//! ([`engine`]), the report ([`report`]) and canary plans in Flagger's terms ([`canary`]); the policy types come from `meshlens-model`, shared
//! with the agent, so what is simulated is what is deployed.

pub mod canary;
pub mod engine;
pub mod policy_input;
pub mod report;
pub mod scenario;

pub use report::{Report, run};
pub use scenario::{Scenario, ScenarioError};

#[cfg(test)]
mod validation;
