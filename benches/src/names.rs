//! Random names, fresh for every run, so that runs never collide and a
//! consumer never sees another run's messages.

/// The names of one run: its input, output and dead letter on any broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `b` + 10 random hex digits; also the durable, group and route name.
    pub id: String,
}

impl Names {
    /// Fresh random names.
    pub fn random() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            id: format!("b{}", &id[..10]),
        }
    }

    /// Names for a known id (the baseline child gets the id on its command
    /// line).
    pub fn from_id(id: &str) -> Self {
        Self { id: id.to_owned() }
    }

    /// The input subject, topic or queue.
    pub fn input(&self) -> String {
        format!("{}.in", self.id)
    }

    /// The output subject, topic or queue.
    pub fn output(&self) -> String {
        format!("{}.out", self.id)
    }

    /// The dead letter subject, topic or queue (stays empty with `echo`).
    pub fn dead_letter(&self) -> String {
        format!("{}.dlq", self.id)
    }

    /// A JetStream stream name: upper-case id plus `suffix`.
    pub fn stream(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.id.to_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_derived_from_the_id() {
        let (a, b) = (Names::random(), Names::random());
        assert_ne!(a, b);
        assert_eq!(Names::from_id(&a.id).input(), a.input());
        assert_eq!(Names::from_id("bx").stream("IN"), "BX_IN");
    }
}
