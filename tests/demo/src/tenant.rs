//! The demo's small tenant: seven people, three groups (one to be nested in another), and
//! LiteLLM's enterprise app with two roles.

use graph_sim::tenant::{App, AppRole, Assignment, Group, PrincipalType, TenantFile, User};
use uuid::Uuid;

/// The people, by first name: user `n` of the tenant is `PEOPLE[n]`.
pub const PEOPLE: [(&str, &str); 7] = [
    ("Ada", "Lovelace"),
    ("Grace", "Hopper"),
    ("Linus", "Torvalds"),
    ("Margaret", "Hamilton"),
    ("Alan", "Turing"),
    ("Barbara", "Liskov"),
    ("Katherine", "Johnson"),
];

pub const ADA: usize = 0;
pub const GRACE: usize = 1;
pub const LINUS: usize = 2;
pub const MARGARET: usize = 3;
pub const ALAN: usize = 4;
pub const BARBARA: usize = 5;
pub const KATHERINE: usize = 6;

/// The groups: Engineering starts unassigned, Research is assigned from the start, and Machine
/// Learning is never assigned (it is nested into Research later).
pub const ENGINEERING: u128 = 1;
pub const RESEARCH: u128 = 2;
pub const MACHINE_LEARNING: u128 = 3;

/// The app roles' values, as LiteLLM's roles are named.
pub const PROXY_ADMIN: &str = "proxy_admin";
pub const INTERNAL_USER: &str = "internal_user";

pub fn user_id(person: usize) -> Uuid {
    Uuid::from_u128(0x5b00_0000_0000_4000_8000_0000_0000_0000 + person as u128 + 1)
}

pub fn group_id(group: u128) -> Uuid {
    Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0000_0000 + group)
}

pub fn role_id(value: &str) -> Uuid {
    match value {
        PROXY_ADMIN => Uuid::from_u128(0xa0_0000_0000_4000_8000_0000_0000_0001),
        _ => Uuid::from_u128(0xa0_0000_0000_4000_8000_0000_0000_0002),
    }
}

/// The address entra-sync gives a person in LiteLLM: the user principal name, lower-cased.
pub fn email(person: usize) -> String {
    format!("{}@contoso.example", PEOPLE[person].0.to_lowercase())
}

pub fn tenant() -> TenantFile {
    let users = PEOPLE
        .iter()
        .enumerate()
        .map(|(n, (first, last))| User {
            id: user_id(n),
            display_name: format!("{first} {last}"),
            user_principal_name: email(n),
            mail: Some(email(n)),
            account_enabled: true,
        })
        .collect();
    let groups = vec![
        Group {
            id: group_id(ENGINEERING),
            display_name: "Engineering".into(),
            description: None,
            members: [ADA, GRACE, LINUS].map(user_id).into(),
            owners: Default::default(),
        },
        Group {
            id: group_id(RESEARCH),
            display_name: "Research".into(),
            description: None,
            members: [ALAN, BARBARA].map(user_id).into(),
            owners: Default::default(),
        },
        Group {
            id: group_id(MACHINE_LEARNING),
            display_name: "Machine Learning".into(),
            description: None,
            members: [KATHERINE].map(user_id).into(),
            owners: Default::default(),
        },
    ];
    let app = App {
        app_roles: [
            (PROXY_ADMIN, "Proxy Admin"),
            (INTERNAL_USER, "Internal User"),
        ]
        .map(|(value, name)| AppRole {
            id: role_id(value),
            value: value.into(),
            display_name: name.into(),
            is_enabled: true,
        })
        .into(),
        assignments: vec![Assignment {
            id: "research-default-access".into(),
            principal_id: group_id(RESEARCH),
            principal_type: PrincipalType::Group,
            app_role_id: Uuid::nil(),
        }],
        ..App::default()
    };
    TenantFile { users, groups, app }
}
