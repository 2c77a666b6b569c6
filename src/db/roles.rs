//! SQL on the group roles of migrations/V6 (one per program, NOLOGIN, cluster-wide): which
//! exist and who is in them, creating them and granting their rights in this database, and
//! attaching a login user to one. Role names reach SQL text only through
//! [`quote_ident`](super::quote_ident).

use crate::db::Sql;
use serde::Serialize;
use tokio_postgres::Client;

use super::quote_ident;
use crate::error::{sqlstate, Error, Result};

/// The groups and the program each is for, in the order people read them.
pub const GROUPS: [(&str, &str); 5] = [
    ("jrq_worker", "jr-queue-worker"),
    ("jrq_assigner", "jr-auto-assigner"),
    ("jrq_monitor", "jr-health-monitor and jr-stale-cleanup"),
    (
        "jrq_reader",
        "dashboards, jrq status/tasks/show/runs list/workers",
    ),
    (
        "jrq_admin",
        "the jrq CLI's writes: enqueue, retry, cancel, runs, prune",
    ),
];

/// The group a name means: `worker` or `jrq_worker`, ... `None` for anything else.
pub fn group_named(name: &str) -> Option<&'static str> {
    let name = name.trim();
    GROUPS
        .iter()
        .map(|(g, _)| *g)
        .find(|g| *g == name || g.strip_prefix("jrq_") == Some(name))
}

/// The list of group names, for messages.
pub fn group_names() -> String {
    GROUPS
        .iter()
        .map(|(g, _)| *g)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A role in a group.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub name: String,
    pub can_login: bool,
    /// Whether it uses the group's rights without `SET ROLE` (a NOINHERIT role does not).
    pub inherits: bool,
    pub superuser: bool,
}

/// One group as the cluster and this database have it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub name: String,
    pub program: String,
    pub exists: bool,
    /// A group should not log in itself.
    pub can_login: bool,
    /// Whether this database's grants are applied (it may read the schema version).
    pub granted_here: bool,
    pub members: Vec<Member>,
}

/// The groups, and what else decides what they can do here.
#[derive(Debug, Clone, Serialize)]
pub struct RolesReport {
    pub database: String,
    pub groups: Vec<GroupRow>,
    /// Whether every role may create objects in schema `public` (PostgreSQL before 15,
    /// or a database made from such a template): then every group can do DDL there.
    pub public_may_create: bool,
}

/// Lists the groups, their members and whether this database granted them their rights.
pub async fn roles_list(client: &impl Sql) -> Result<RolesReport> {
    let names: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
    let rows = client
        .rows(
            "SELECT g.name, r.oid IS NOT NULL, coalesce(r.rolcanlogin, false), \
                 CASE WHEN r.oid IS NULL THEN false \
                      ELSE has_table_privilege(r.oid, 'public.jrq_schema_history', 'SELECT') \
                 END, \
                 coalesce(m.names, '{}'), coalesce(m.login, '{}'), \
                 coalesce(m.inherit, '{}'), coalesce(m.super, '{}') \
             FROM unnest($1::text[]) WITH ORDINALITY AS g(name, ord) \
             LEFT JOIN pg_roles r ON r.rolname = g.name \
             LEFT JOIN LATERAL ( \
                 SELECT array_agg(u.rolname::text ORDER BY u.rolname) AS names, \
                        array_agg(u.rolcanlogin ORDER BY u.rolname) AS login, \
                        array_agg(u.rolinherit ORDER BY u.rolname) AS inherit, \
                        array_agg(u.rolsuper ORDER BY u.rolname) AS super \
                 FROM pg_auth_members am JOIN pg_roles u ON u.oid = am.member \
                 WHERE am.roleid = r.oid) m ON true \
             ORDER BY g.ord",
            &[&names],
        )
        .await?;
    let groups = rows
        .iter()
        .zip(GROUPS.iter())
        .map(|(r, (_, program))| {
            let names: Vec<String> = r.get(4);
            let login: Vec<bool> = r.get(5);
            let inherit: Vec<bool> = r.get(6);
            let superuser: Vec<bool> = r.get(7);
            GroupRow {
                name: r.get(0),
                program: program.to_string(),
                exists: r.get(1),
                can_login: r.get(2),
                granted_here: r.get(3),
                members: names
                    .into_iter()
                    .zip(login)
                    .zip(inherit)
                    .zip(superuser)
                    .map(|(((name, can_login), inherits), superuser)| Member {
                        name,
                        can_login,
                        inherits,
                        superuser,
                    })
                    .collect(),
            }
        })
        .collect();
    let row = client
        .row(
            "SELECT current_database()::text, has_schema_privilege('public', 'public', 'CREATE')",
            &[],
        )
        .await?;
    Ok(RolesReport {
        database: row.get(0),
        groups,
        public_may_create: row.get(1),
    })
}

/// Which of `names` are roles of this cluster.
pub async fn roles_existing(
    client: &impl Sql,
    names: &[&str],
) -> Result<std::collections::HashSet<String>> {
    if names.is_empty() {
        return Ok(Default::default());
    }
    Ok(client
        .rows(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1::text[])",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The groups that do not exist in this cluster.
pub async fn roles_missing(client: &impl Sql) -> Result<Vec<String>> {
    let names: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
    Ok(client
        .rows(
            "SELECT g FROM unnest($1::text[]) WITH ORDINALITY AS u(g, ord) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g) ORDER BY ord",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What `roles_setup` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    pub created: Vec<String>,
    pub existed: Vec<String>,
    /// Missing groups this user may not create (no CREATEROLE).
    pub not_permitted: Vec<String>,
    /// Groups granted their rights in this database.
    pub granted: Vec<String>,
}

/// Creates the missing groups (as far as this user may) and grants every existing group
/// its rights in this database (this user must own jrq's tables). The groups are created
/// first and stay created when the grants are refused.
pub async fn roles_setup(client: &Client) -> Result<SetupReport> {
    let mut report = SetupReport::default();
    for r in client
        .rows("SELECT group_name, outcome FROM jrq_create_groups()", &[])
        .await?
    {
        let (name, outcome): (String, String) = (r.get(0), r.get(1));
        match outcome.as_str() {
            "created" => report.created.push(name),
            "exists" => report.existed.push(name),
            _ => report.not_permitted.push(name),
        }
    }
    // The governor's tables (V9) have their grants in a function of their own.
    match client
        .row("SELECT jrq_grant_groups(), jrq_grant_governor()", &[])
        .await
    {
        Ok(row) => report.granted = row.get(0),
        Err(e) if sqlstate(&e) == Some("42501") => {
            let user = current_user(client).await?;
            let created = if report.created.is_empty() {
                String::new()
            } else {
                format!("created {}; ", report.created.join(", "))
            };
            return Err(Error::Denied(format!(
                "{created}the grants need the owner of jrq's tables, not '{user}' ({}): run \
                 `jrq roles setup` as the user that ran `jrq migrate`",
                crate::error::describe_pg_error(&e)
            )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(report)
}

async fn current_user(client: &impl Sql) -> Result<String> {
    Ok(client.row("SELECT current_user::text", &[]).await?.get(0))
}

/// A role the CLI is asked to attach.
#[derive(Debug, Clone)]
struct RoleInfo {
    can_login: bool,
    inherits: bool,
    superuser: bool,
    /// The jrq groups it is in now.
    groups: Vec<String>,
}

async fn role_info(client: &impl Sql, name: &str) -> Result<Option<RoleInfo>> {
    let names: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
    Ok(client
        .row_opt(
            "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, \
                 coalesce((SELECT array_agg(g.rolname::text ORDER BY g.rolname) \
                           FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid \
                           WHERE am.member = r.oid AND g.rolname = ANY($2)), '{}') \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&name, &names],
        )
        .await?
        .map(|r| RoleInfo {
            can_login: r.get(0),
            inherits: r.get(1),
            superuser: r.get(2),
            groups: r.get(3),
        }))
}

/// What `roles_grant` did.
#[derive(Debug, Clone, Serialize)]
pub struct GrantReport {
    pub group: String,
    pub login: String,
    pub database: String,
    /// It was in the group already.
    pub already: bool,
    /// What makes the membership weaker or riskier than it looks, one phrase each.
    pub notes: Vec<String>,
}

/// Adds the login role `login` to `group` and lets it connect to this database, in one
/// transaction. A group or login that does not exist is refused and nothing changes.
pub async fn roles_grant(client: &mut Client, group: &str, login: &str) -> Result<GrantReport> {
    let txn = client.transaction().await?;
    check_group_exists(&txn, group).await?;
    let info = role_info(&txn, login)
        .await?
        .ok_or_else(|| no_such_login(login))?;
    let database: String = txn
        .row("SELECT current_database()::text", &[])
        .await?
        .get(0);
    let (g, l, d) = (
        quote_ident(group)?,
        quote_ident(login)?,
        quote_ident(&database)?,
    );
    let already = info.groups.iter().any(|x| x == group);
    let denied = |e: tokio_postgres::Error| {
        if sqlstate(&e) == Some("42501") {
            Error::Denied(format!(
                "cannot add '{login}' to {group}: {}; run this as a role with CREATEROLE \
                 (or ADMIN OPTION on {group}), or have a DBA run: GRANT {group} TO {l}",
                crate::error::describe_pg_error(&e)
            ))
        } else {
            e.into()
        }
    };
    if !already {
        txn.batch_execute(&format!("GRANT {g} TO {l}"))
            .await
            .map_err(denied)?;
    }
    // Takes effect where CONNECT is revoked from PUBLIC (docs/security.md): then only
    // logins attached to this database's groups connect to it.
    txn.batch_execute(&format!("GRANT CONNECT ON DATABASE {d} TO {l}"))
        .await
        .map_err(denied)?;
    txn.commit().await?;
    let mut notes = vec![];
    if info.superuser {
        notes.push(format!(
            "'{login}' is a superuser: every check passes for it, the group changes nothing"
        ));
    }
    if !info.can_login {
        notes.push(format!("'{login}' cannot log in (NOLOGIN)"));
    }
    if !info.inherits {
        notes.push(format!(
            "'{login}' is NOINHERIT and does not use the group's rights without SET ROLE: \
             ALTER ROLE {l} INHERIT"
        ));
    }
    let reads_fences = ["jrq_reader", "jrq_admin"];
    let others: Vec<&String> = info.groups.iter().filter(|x| *x != group).collect();
    let mixes = (group == "jrq_worker"
        && others.iter().any(|x| reads_fences.contains(&x.as_str())))
        || (reads_fences.contains(&group) && others.iter().any(|x| *x == "jrq_worker"));
    if mixes {
        notes.push(format!(
            "'{login}' is in jrq_worker and a group that reads workers' instance ids: it \
             could write for another worker; give each program a login of its own"
        ));
    }
    Ok(GrantReport {
        group: group.into(),
        login: login.into(),
        database,
        already,
        notes,
    })
}

/// Takes the login role `login` out of `group`. Returns whether it was in it.
pub async fn roles_revoke(client: &mut Client, group: &str, login: &str) -> Result<bool> {
    let txn = client.transaction().await?;
    check_group_exists(&txn, group).await?;
    let info = role_info(&txn, login)
        .await?
        .ok_or_else(|| no_such_login(login))?;
    if !info.groups.iter().any(|x| x == group) {
        return Ok(false);
    }
    let (g, l) = (quote_ident(group)?, quote_ident(login)?);
    txn.batch_execute(&format!("REVOKE {g} FROM {l}"))
        .await
        .map_err(|e| {
            if sqlstate(&e) == Some("42501") {
                Error::Denied(format!(
                    "cannot take '{login}' out of {group}: {}; run this as a role with \
                     CREATEROLE (or ADMIN OPTION on {group})",
                    crate::error::describe_pg_error(&e)
                ))
            } else {
                e.into()
            }
        })?;
    txn.commit().await?;
    Ok(true)
}

async fn check_group_exists(client: &impl Sql, group: &str) -> Result<()> {
    let exists = client
        .row_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&group])
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    Err(Error::NotFound(format!(
        "the group {group} does not exist in this cluster: create the groups with `jrq roles \
         setup` (needs CREATEROLE) or have a DBA run CREATE ROLE {group} NOLOGIN"
    )))
}

fn no_such_login(login: &str) -> Error {
    Error::NotFound(format!(
        "there is no role '{login}' in this cluster: create the login first (CREATE ROLE \
         ... LOGIN), then attach it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_with_or_without_the_prefix() {
        assert_eq!(group_named("worker"), Some("jrq_worker"));
        assert_eq!(group_named("jrq_admin"), Some("jrq_admin"));
        assert_eq!(group_named(" reader "), Some("jrq_reader"));
        assert_eq!(group_named("jrq_"), None);
        assert_eq!(group_named("owner"), None);
        assert_eq!(group_named(""), None);
    }
}
