//! Who may see and do what with lessons and series (lesson.proto, "Who may do what"), decided
//! from the caller's access token and, for school admins, the tutors of their schools.
//!
//! - A tutor sees and manages the lessons they teach.
//! - A school admin sees and manages the lessons of the school's tutors, as those tutors would.
//!   The token names the admin's schools, not their tutors: the application resolves those from
//!   the `lesson_school_tutors` read model when it builds the [`Actor`].
//! - A student sees their own lessons and may cancel them.
//! - A parent sees their children's lessons and may cancel them (children as of the token).
//! - A platform admin sees and manages every lesson.
//!
//! A lesson outside the caller's sight is NOT_FOUND, never PERMISSION_DENIED, so its existence is
//! not revealed; PERMISSION_DENIED means the caller sees it but may not do this.

use repit_platform::auth::{Caller, Role};

use crate::error::AppError;

/// What a request does to a lesson or series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read it.
    Read,
    /// Cancel it (the student side may).
    Cancel,
    /// Change it in any other way (the tutor side only).
    Manage,
}

/// The caller of a lesson request, with the decisions the service asks about it.
#[derive(Clone, Debug)]
pub struct Actor {
    caller: Caller,
    /// The tutors of the schools the caller administers.
    school_tutors: Vec<String>,
}

impl Actor {
    pub fn new(caller: Caller) -> Self {
        Self {
            caller,
            school_tutors: Vec::new(),
        }
    }

    /// The same caller, administering the schools these tutors teach in.
    pub fn with_school_tutors(mut self, tutors: Vec<String>) -> Self {
        self.school_tutors = tutors;
        self
    }

    /// The caller's user id (the `actor_user_id` of the events they cause).
    pub fn user_id(&self) -> &str {
        &self.caller.user_id
    }

    pub fn is_platform_admin(&self) -> bool {
        self.caller.is_platform_admin()
    }

    /// The caller's profile time zone, as the token names it.
    pub fn time_zone(&self) -> Option<&str> {
        self.caller.time_zone.as_deref()
    }

    /// Whether the caller teaches, i.e. has a tenancy of their own.
    pub fn is_tutor(&self) -> bool {
        self.caller.is_tutor()
    }

    pub fn is_student(&self) -> bool {
        self.caller.has_role(Role::Student)
    }

    /// A parent's children, as of the token.
    pub fn children(&self) -> &[String] {
        if self.caller.has_role(Role::Parent) {
            &self.caller.children
        } else {
            &[]
        }
    }

    /// Whether the caller runs `tutor_id`'s side of lessons: that tutor, an admin of a school
    /// the tutor teaches in, or a platform admin.
    pub fn manages(&self, tutor_id: &str) -> bool {
        self.is_platform_admin()
            || (self.is_tutor() && self.user_id() == tutor_id)
            || self.school_tutors.iter().any(|t| t == tutor_id)
    }

    /// Whether the caller runs some tutor's side of lessons (schedules, names students): a tutor
    /// or an admin, even of a school without tutors yet (who then finds no tutor to act for).
    pub fn manages_any(&self) -> bool {
        self.is_tutor() || self.caller.has_role(Role::Admin)
    }

    /// Whether the caller is `student_id` or one of their parents.
    pub fn is_student_side(&self, student_id: &str) -> bool {
        (self.is_student() && self.user_id() == student_id)
            || self.children().iter().any(|child| child == student_id)
    }

    /// Whether the caller may see a lesson or series between `tutor_id` and `student_id`.
    pub fn sees(&self, tutor_id: &str, student_id: &str) -> bool {
        self.manages(tutor_id) || self.is_student_side(student_id)
    }

    /// Whether the caller may do `action` to a lesson or series of `tutor_id` and `student_id`:
    /// NOT_FOUND (`kind` `id`) when they may not see it, PERMISSION_DENIED when they see it
    /// but may not do this.
    pub fn check(
        &self,
        action: Action,
        tutor_id: &str,
        student_id: &str,
        kind: &'static str,
        id: &str,
    ) -> Result<(), AppError> {
        if !self.sees(tutor_id, student_id) {
            return Err(AppError::NotFound {
                kind,
                id: id.to_owned(),
            });
        }
        let allowed = match action {
            Action::Read => true,
            Action::Cancel => true,
            Action::Manage => self.manages(tutor_id),
        };
        if allowed {
            Ok(())
        } else {
            Err(AppError::Forbidden(match action {
                Action::Manage => "only the lesson's tutor may change it",
                Action::Read | Action::Cancel => "not allowed",
            }))
        }
    }

    /// The lessons the caller may see, as a filter for list queries.
    pub fn visibility(&self) -> Visibility {
        if self.is_platform_admin() {
            return Visibility::Everything;
        }
        let mut tutors = self.school_tutors.clone();
        if self.is_tutor() && !tutors.iter().any(|t| t == self.user_id()) {
            tutors.push(self.user_id().to_owned());
        }
        let mut students: Vec<String> = self.children().to_vec();
        if self.is_student() {
            students.push(self.user_id().to_owned());
        }
        Visibility::Only { tutors, students }
    }
}

/// Which lessons or series a caller may see. The default shows nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Every one (platform admins).
    Everything,
    /// Those taught by one of `tutors` or taken by one of `students`.
    Only {
        tutors: Vec<String>,
        students: Vec<String>,
    },
}

impl Default for Visibility {
    fn default() -> Self {
        Self::Only {
            tutors: vec![],
            students: vec![],
        }
    }
}

impl Visibility {
    /// Whether a lesson or series of `tutor_id` and `student_id` is visible.
    pub fn allows(&self, tutor_id: &str, student_id: &str) -> bool {
        match self {
            Self::Everything => true,
            Self::Only { tutors, students } => {
                tutors.iter().any(|t| t == tutor_id) || students.iter().any(|s| s == student_id)
            }
        }
    }

    /// The SQL condition (on `tutor_id` and `student_id` columns) with its text parameters,
    /// numbered from `first_param`. Ids are bound, never formatted into the text.
    pub fn sql(&self, first_param: usize) -> (String, Vec<String>) {
        let Self::Only { tutors, students } = self else {
            return ("1 = 1".to_owned(), vec![]);
        };
        let mut params = Vec::new();
        let mut parts = Vec::new();
        for (column, ids) in [("tutor_id", tutors), ("student_id", students)] {
            if ids.is_empty() {
                continue;
            }
            let placeholders: Vec<String> = ids
                .iter()
                .map(|id| {
                    params.push(id.clone());
                    format!("${}", first_param + params.len() - 1)
                })
                .collect();
            parts.push(format!("{column} IN ({})", placeholders.join(", ")));
        }
        if parts.is_empty() {
            return ("1 = 0".to_owned(), vec![]);
        }
        (format!("({})", parts.join(" OR ")), params)
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use repit_platform::auth::RoleClaim;

    use super::*;

    fn actor(user: &str, roles: Vec<RoleClaim>, children: &[&str]) -> Actor {
        Actor::new(Caller {
            user_id: user.into(),
            session_id: "s".into(),
            roles,
            children: children.iter().map(|c| (*c).to_owned()).collect(),
            time_zone: None,
            expires_at: DateTime::from_timestamp(1_800_000_000, 0).expect("instant"),
        })
    }

    #[test]
    fn a_school_admin_manages_the_schools_tutors_lessons_and_sees_no_others() {
        let admin = actor(
            "a1",
            vec![RoleClaim::new(Role::Admin).with_school("school")],
            &[],
        )
        .with_school_tutors(vec!["t1".into(), "t2".into()]);
        assert!(admin.manages_any());
        for tutor in ["t1", "t2"] {
            assert!(
                admin
                    .check(Action::Manage, tutor, "s1", "lesson", "l")
                    .is_ok()
            );
        }
        assert!(matches!(
            admin.check(Action::Read, "t3", "s1", "lesson", "l"),
            Err(AppError::NotFound { .. })
        ));
        assert_eq!(
            admin.visibility(),
            Visibility::Only {
                tutors: vec!["t1".into(), "t2".into()],
                students: vec![],
            }
        );
        // Without tutors (a new school), no lesson is theirs: any tutor they name is not found.
        let empty = actor(
            "a1",
            vec![RoleClaim::new(Role::Admin).with_school("school")],
            &[],
        );
        assert!(empty.manages_any() && !empty.manages("t1"));
    }

    #[test]
    fn a_tutor_manages_own_lessons_and_never_sees_another_tutors() {
        let tutor = actor("t1", vec![RoleClaim::new(Role::Tutor)], &[]);
        assert!(
            tutor
                .check(Action::Manage, "t1", "s1", "lesson", "l")
                .is_ok()
        );
        let other = tutor.check(Action::Read, "t2", "s1", "lesson", "l");
        assert!(matches!(other, Err(AppError::NotFound { .. })));
    }

    #[test]
    fn students_and_parents_read_and_cancel_but_may_not_manage() {
        let student = actor(
            "s1",
            vec![RoleClaim::new(Role::Student).with_tutor("t1")],
            &[],
        );
        let parent = actor(
            "p1",
            vec![RoleClaim::new(Role::Parent).with_tutor("t1")],
            &["s1"],
        );
        for who in [&student, &parent] {
            assert!(who.check(Action::Read, "t1", "s1", "lesson", "l").is_ok());
            assert!(who.check(Action::Cancel, "t1", "s1", "lesson", "l").is_ok());
            assert!(matches!(
                who.check(Action::Manage, "t1", "s1", "lesson", "l"),
                Err(AppError::Forbidden(_))
            ));
            assert!(matches!(
                who.check(Action::Read, "t1", "s2", "lesson", "l"),
                Err(AppError::NotFound { .. })
            ));
        }
    }

    #[test]
    fn a_parent_grant_without_children_and_a_child_list_without_the_grant_show_nothing() {
        let no_role = actor("x", vec![], &["s1"]);
        assert!(!no_role.sees("t1", "s1"));
        assert_eq!(no_role.visibility().sql(1), ("1 = 0".to_owned(), vec![]));
    }

    #[test]
    fn visibility_becomes_a_bound_sql_condition() {
        let both = actor(
            "u1",
            vec![
                RoleClaim::new(Role::Tutor),
                RoleClaim::new(Role::Parent).with_tutor("t9"),
            ],
            &["k1", "k2"],
        );
        let (sql, params) = both.visibility().sql(3);
        assert_eq!(sql, "(tutor_id IN ($3) OR student_id IN ($4, $5))");
        assert_eq!(params, vec!["u1", "k1", "k2"]);
        let admin = actor("a", vec![RoleClaim::new(Role::Admin)], &[]);
        assert_eq!(admin.visibility(), Visibility::Everything);
        assert!(admin.sees("any", "one"));
    }
}
