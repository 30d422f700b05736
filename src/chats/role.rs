//! The caller's role in a chat, read under the chat row's lock: every
//! membership and pin change starts here.

use crate::error::ApiError;
use crate::membership::join_member;
use std::sync::LazyLock;
use tokio_postgres::GenericClient;

/// The caller's role in a chat, locking the chat row so concurrent membership
/// changes of one chat run one at a time. `None`: not a member (→ 404).
pub struct Role {
    pub is_group: bool,
    pub is_admin: bool,
    pub creator_id: Option<i64>,
    pub name: Option<String>,
}

pub async fn lock_role(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
) -> Result<Role, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select c.is_group, m.is_admin, c.creator_id, c.name
             from chats c {} where c.id = $1
             for update of c",
            join_member("m", "c.id", "$2")
        )
    });
    let row = client
        .query_opt(SQL.as_str(), &[&chat_id, &user_id])
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    Ok(Role {
        is_group: row.get(0),
        is_admin: row.get(1),
        creator_id: row.get(2),
        name: row.get(3),
    })
}
