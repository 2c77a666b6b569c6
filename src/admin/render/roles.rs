//! Output of `jrq roles` and of the role checks of `jrq migrate`.

use super::{add_row, print_json, print_table, table};
use crate::db::roles::{GrantReport, RolesReport, SetupReport};
use crate::error::Result;

/// One line on stderr after `jrq migrate` when groups are missing: the migration
/// succeeded, and this is what is left for a DBA.
pub fn groups_missing(missing: &[String]) {
    let sql: Vec<String> = missing
        .iter()
        .map(|g| format!("CREATE ROLE {g} NOLOGIN;"))
        .collect();
    esay!(
        "jrq migrate: the groups {} do not exist and were not created (that needs CREATEROLE): \
         have a DBA run {} then run `jrq roles setup` as this user (docs/security.md)",
        missing.join(", "),
        sql.join(" ")
    );
}

pub fn roles(r: &RolesReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let mut t = table(&["group", "exists", "granted here", "members", "for"]);
    for g in &r.groups {
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| {
                let mut flags = vec![];
                if !m.can_login {
                    flags.push("nologin");
                }
                if !m.inherits {
                    flags.push("noinherit");
                }
                if m.superuser {
                    flags.push("superuser");
                }
                if flags.is_empty() {
                    m.name.clone()
                } else {
                    format!("{} ({})", m.name, flags.join(", "))
                }
            })
            .collect();
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
        add_row(
            &mut t,
            vec![
                g.name.clone(),
                if g.exists && g.can_login {
                    "yes (can log in!)".into()
                } else {
                    yes_no(g.exists)
                },
                if g.exists {
                    yes_no(g.granted_here)
                } else {
                    "-".into()
                },
                if members.is_empty() {
                    "-".into()
                } else {
                    members.join(", ")
                },
                g.program.clone(),
            ],
        );
    }
    print_table(&t);
    let missing: Vec<&str> = r
        .groups
        .iter()
        .filter(|g| !g.exists)
        .map(|g| g.name.as_str())
        .collect();
    if !missing.is_empty() {
        say!(
            "missing: {} (create them with `jrq roles setup`, which needs CREATEROLE)",
            missing.join(", ")
        );
    }
    if r.groups.iter().any(|g| g.exists && !g.granted_here) {
        say!(
            "not granted in database '{}': run `jrq roles setup` as the user that ran `jrq migrate`",
            r.database
        );
    }
    if r.public_may_create {
        say!(
            "warning: every role may create objects in schema public here: REVOKE CREATE ON \
             SCHEMA public FROM PUBLIC (as its owner) so that no group can do DDL"
        );
    }
    Ok(())
}

pub fn roles_setup(r: &SetupReport) {
    if !r.created.is_empty() {
        say!("created {}", r.created.join(", "));
    }
    if r.granted.is_empty() {
        say!("no group exists yet: nothing granted");
    } else {
        say!(
            "granted their rights in this database: {}",
            r.granted.join(", ")
        );
    }
}

pub fn roles_granted(r: &GrantReport) {
    let what = if r.already {
        format!("'{}' is already in {}", r.login, r.group)
    } else {
        format!("'{}' is now in {}", r.login, r.group)
    };
    let mut line = format!("{what} and may connect to database '{}'", r.database);
    for n in &r.notes {
        line.push_str("; note: ");
        line.push_str(n);
    }
    say!("{line}");
}
