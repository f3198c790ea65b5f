//! The components one `repitd` process can run, and the `--target` syntax that selects them.

use std::fmt;
use std::str::FromStr;

/// A component `repitd` can run. Each service component mounts one gRPC service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    User,
    Student,
    Tutor,
    Lesson,
    Homework,
    Payment,
    Material,
    Notification,
    Analytics,
    Gateway,
}

impl Component {
    /// Every component, in the order `--target all` starts them.
    pub const ALL: [Component; 10] = [
        Component::User,
        Component::Student,
        Component::Tutor,
        Component::Lesson,
        Component::Homework,
        Component::Payment,
        Component::Material,
        Component::Notification,
        Component::Analytics,
        Component::Gateway,
    ];

    /// The name `--target` uses for this component.
    pub fn name(self) -> &'static str {
        match self {
            Component::User => "user",
            Component::Student => "student",
            Component::Tutor => "tutor",
            Component::Lesson => "lesson",
            Component::Homework => "homework",
            Component::Payment => "payment",
            Component::Material => "material",
            Component::Notification => "notification",
            Component::Analytics => "analytics",
            Component::Gateway => "gateway",
        }
    }

    /// The fully qualified gRPC service this component serves.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Component::User => repit_user::GRPC_SERVICE,
            Component::Student => repit_student::GRPC_SERVICE,
            Component::Tutor => repit_tutor::GRPC_SERVICE,
            Component::Lesson => repit_lesson::GRPC_SERVICE,
            Component::Homework => repit_homework::GRPC_SERVICE,
            Component::Payment => repit_payment::GRPC_SERVICE,
            Component::Material => repit_material::GRPC_SERVICE,
            Component::Notification => repit_notification::GRPC_SERVICE,
            Component::Analytics => repit_analytics::GRPC_SERVICE,
            Component::Gateway => repit_gateway::GRPC_SERVICE,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A background worker `repitd` can run beside (or instead of) the gRPC services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Worker {
    /// Follows the event store's `$all` and publishes every event once to NATS JetStream.
    Relay,
    /// Runs every read model and reactor (DESIGN.md, "Read path and fan-out").
    Projections,
}

impl Worker {
    /// Every worker.
    pub const ALL: [Worker; 2] = [Worker::Relay, Worker::Projections];

    /// The name `--target` uses for this worker.
    pub fn name(self) -> &'static str {
        match self {
            Worker::Relay => "relay",
            Worker::Projections => "projections",
        }
    }
}

/// The components selected by `--target`: `all`, or a comma-separated list of names.
///
/// `all` is every service plus the projections, plus the relay when NATS is configured (the
/// relay has nothing to do without it): one process is the whole product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSet {
    services: Vec<Component>,
    workers: Vec<Worker>,
    all: bool,
}

impl TargetSet {
    pub fn all() -> Self {
        Self {
            services: Component::ALL.to_vec(),
            workers: Worker::ALL.to_vec(),
            all: true,
        }
    }

    /// The selected components, each once, in [`Component::ALL`] order.
    pub fn components(&self) -> &[Component] {
        &self.services
    }

    /// The selected workers, each once.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Whether `worker` runs.
    pub fn runs(&self, worker: Worker) -> bool {
        self.workers.contains(&worker)
    }

    /// Whether the set came from `all` (the relay then runs only when NATS is configured).
    pub fn is_all(&self) -> bool {
        self.all
    }
}

impl Default for TargetSet {
    fn default() -> Self {
        Self::all()
    }
}

impl fmt::Display for TargetSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("all");
        }
        let names: Vec<&str> = self
            .services
            .iter()
            .map(|c| c.name())
            .chain(self.workers.iter().map(|w| w.name()))
            .collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for TargetSet {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut set = Self {
            services: Vec::new(),
            workers: Vec::new(),
            all: false,
        };
        for name in raw.split(',').map(str::trim) {
            if name == "all" {
                set = Self::all();
                continue;
            }
            if let Some(component) = Component::ALL.into_iter().find(|c| c.name() == name) {
                set.services.push(component);
            } else if let Some(worker) = Worker::ALL.into_iter().find(|w| w.name() == name) {
                set.workers.push(worker);
            } else {
                let known: Vec<&str> = Component::ALL
                    .iter()
                    .map(|c| c.name())
                    .chain(Worker::ALL.iter().map(|w| w.name()))
                    .collect();
                return Err(format!(
                    "unknown target `{name}`; expected `all` or a comma list of: {}",
                    known.join(", ")
                ));
            }
        }
        set.services.sort();
        set.services.dedup();
        set.workers.sort();
        set.workers.dedup();
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_selects_every_component() {
        assert_eq!("all".parse::<TargetSet>(), Ok(TargetSet::all()));
    }

    #[test]
    fn a_comma_list_selects_each_once_in_canonical_order() {
        let set: TargetSet = "lesson, user,lesson".parse().expect("valid list");
        assert_eq!(set.components(), &[Component::User, Component::Lesson]);
        assert_eq!(set.to_string(), "user,lesson");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_valid_ones() {
        let error = "lesson,lessons"
            .parse::<TargetSet>()
            .expect_err("unknown target");
        assert!(
            error.contains("`lessons`") && error.contains("homework"),
            "{error}"
        );
    }

    #[test]
    fn workers_are_targets_too() {
        let set: TargetSet = "lesson,relay,projections".parse().expect("valid list");
        assert_eq!(set.components(), &[Component::Lesson]);
        assert_eq!(set.workers(), &[Worker::Relay, Worker::Projections]);
        assert_eq!(set.to_string(), "lesson,relay,projections");
    }

    #[test]
    fn an_empty_name_is_refused() {
        assert!("lesson,".parse::<TargetSet>().is_err());
    }

    #[test]
    fn every_component_names_a_service_of_its_own_package() {
        for component in Component::ALL {
            let expected = format!("repit.{}.v1.", component.name());
            assert!(
                component.grpc_service().starts_with(&expected),
                "{component}"
            );
        }
    }
}
