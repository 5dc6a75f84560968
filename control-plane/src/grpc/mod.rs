//! gRPC services. Operator-facing: `EndpointService`, `DashboardService`,
//! `ApiKeyService`; proxy-facing: `RoutingService` (here) and
//! `StatsService` (`crate::ingest`). The REST gateway calls the same
//! service implementations.

pub mod api_keys;
pub mod auth;
pub mod dashboard;
pub mod endpoints;
pub mod overview;
pub mod routing;

use tonic::Status;
use uuid::Uuid;

use crate::registry::RegistryError;

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::Invalid(m) => Status::invalid_argument(m),
            e @ RegistryError::NotFound(..) => Status::not_found(e.to_string()),
            e @ RegistryError::NameTaken(_) => Status::already_exists(e.to_string()),
            RegistryError::Db(e) => {
                tracing::error!(error = %e, "database error");
                Status::internal("database error")
            }
        }
    }
}

/// Parses an id field; INVALID_ARGUMENT when it is not a UUID.
pub fn parse_id(what: &str, id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(id)
        .map_err(|_| Status::invalid_argument(format!("{what} {id:?} is not a valid UUID")))
}
