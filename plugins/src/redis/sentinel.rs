//! `policy: "redis-sentinel"`: finding the master through the sentinels, as APISIX's connector
//! does.
//!
//! * The sentinels are asked in the conf's order, `SENTINEL get-master-addr-by-name <name>`;
//!   the first that answers an address wins, one that is down or does not know the name is
//!   skipped.
//! * The address is checked with `ROLE` before it is used: a sentinel that has not noticed a
//!   failover yet may still name a demoted master, whose writes would fail.
//! * Failover is followed by the backend's breaker: any failure drops the connection, and the
//!   next probe discovers the master again (`READONLY` from a demoted master is such a failure).

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, RedisResult, Value,
};

/// Where the sentinels are and how to log in to them.
#[derive(Clone, Debug)]
pub struct Sentinels {
    pub nodes: Vec<(String, u16)>,
    pub master: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Sentinels {
    /// A connection to the current master, logged in with `redis` (database and credentials).
    pub async fn connect_master(
        &self,
        redis: RedisConnectionInfo,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let (host, port) = self.master_addr(config).await?;
        let mut conn = open(&host, port, redis, config).await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok(conn),
            _ => Err(RedisError::from((
                ErrorKind::Client,
                "the sentinels name a server that is not a master (yet)",
                format!("{host}:{port}"),
            ))),
        }
    }

    /// The master's address, from the first sentinel that knows it.
    async fn master_addr(&self, config: &AsyncConnectionConfig) -> RedisResult<(String, u16)> {
        let mut last = None;
        for (host, port) in &self.nodes {
            match self.ask(host, *port, config).await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "no sentinel knows the master",
                self.master.clone(),
            ))
        }))
    }

    async fn ask(
        &self,
        host: &str,
        port: u16,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<Option<(String, u16)>> {
        let mut login = RedisConnectionInfo::default();
        if let Some(u) = &self.username {
            login = login.set_username(u);
        }
        if let Some(p) = &self.password {
            login = login.set_password(p);
        }
        let mut conn = open(host, port, login, config).await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await
    }
}

async fn open(
    host: &str,
    port: u16,
    login: RedisConnectionInfo,
    config: &AsyncConnectionConfig,
) -> RedisResult<MultiplexedConnection> {
    let info = ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()?
        .set_redis_settings(login);
    Client::open(info)?
        .get_multiplexed_async_connection_with_config(config)
        .await
}
