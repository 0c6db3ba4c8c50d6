//! The simulator's shared state and its in-process handle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use uuid::Uuid;

use crate::api::DeltaSession;
use crate::faults::{Fault, RequestRecord};
use crate::lag::Lagging;
use crate::notifications::{DeliveryConfig, DeliveryRecord, Subscription};
use crate::tenant::{Notice, Tenant, TenantFile};

/// A certificate registered on the app: assertions signed by its key are accepted.
#[derive(Clone, Debug)]
pub struct RegisteredCertificate {
    /// base64url of the SHA-256 of the certificate's DER, as the `x5t#S256` header carries it.
    pub thumbprint_sha256: String,
    /// The certificate's public key, PEM.
    pub public_key_pem: String,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub tenant_id: Uuid,
    pub client_id: Uuid,
    pub client_secret: Option<String>,
    pub certificates: Vec<RegisteredCertificate>,
    /// The exact assertion a workload-identity token file holds.
    pub federated_assertion: Option<String>,
    pub token_lifetime: Duration,
    /// The largest page any list answers with (Graph's own limits are larger; small pages
    /// exercise paging).
    pub page_size: usize,
    /// How many `members@delta` entries one group object of a delta page carries; a group with
    /// more appears several times, as Graph does.
    pub delta_members_per_object: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tenant_id: Uuid::new_v4(),
            client_id: Uuid::new_v4(),
            client_secret: Some("sim-secret".into()),
            certificates: Vec::new(),
            federated_assertion: None,
            token_lifetime: Duration::from_secs(3599),
            page_size: 100,
            delta_members_per_object: 1000,
        }
    }
}

pub(crate) struct Inner {
    pub config: Mutex<SimConfig>,
    pub tenant: Mutex<Tenant>,
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub delta_sessions: Mutex<HashMap<String, DeltaSession>>,
    pub faults: Mutex<Vec<Fault>>,
    /// Users and groups that reads of themselves miss (see [`crate::lag`]).
    pub lagging: Mutex<Lagging>,
    /// Requests a `hold` fault keeps waiting, and the signal that lets them go (sent when the
    /// faults are cleared).
    pub held: std::sync::atomic::AtomicUsize,
    pub release: tokio::sync::watch::Sender<u64>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub subscriptions: Mutex<HashMap<String, Subscription>>,
    pub delivery: Mutex<DeliveryConfig>,
    pub deliveries: Mutex<Vec<DeliveryRecord>>,
    pub base_url: String,
    pub http: reqwest::Client,
    /// Changes with the delivery settings in force when they happened.
    pub outbox: tokio::sync::mpsc::UnboundedSender<(Vec<Notice>, DeliveryConfig)>,
}

/// A running simulator. Cloning shares it; it stops when the last clone is dropped or on
/// [`GraphSim::shutdown`].
#[derive(Clone)]
pub struct GraphSim {
    pub(crate) inner: Arc<Inner>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Inner {
    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
        self.release.send_modify(|generation| *generation += 1);
    }

    /// Changes the tenant and hands the notifications the change causes to the delivery loop.
    pub(crate) fn change<R>(&self, f: impl FnOnce(&mut Tenant) -> (R, Vec<Notice>)) -> R {
        let (result, notices) = f(&mut lock(&self.tenant));
        if !notices.is_empty() {
            let delivery = lock(&self.delivery).clone();
            let _ = self.outbox.send((notices, delivery));
        }
        result
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("graph-sim state lock poisoned")
}

impl GraphSim {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: SimConfig, tenant: TenantFile) -> std::io::Result<Self> {
        Self::start_on(
            "127.0.0.1:0".parse().expect("valid address"),
            config,
            tenant,
        )
        .await
    }

    pub async fn start_on(
        addr: SocketAddr,
        config: SimConfig,
        tenant: TenantFile,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        // The enterprise app is the service principal of the app registration that signs in.
        let mut tenant = tenant;
        tenant.app.app_id = config.client_id;
        let local = listener.local_addr()?;
        let (outbox, inbox) = tokio::sync::mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        let inner = Arc::new(Inner {
            config: Mutex::new(config),
            tenant: Mutex::new(Tenant::from_file(tenant)),
            tokens: Mutex::default(),
            delta_sessions: Mutex::default(),
            faults: Mutex::default(),
            lagging: Mutex::default(),
            held: Default::default(),
            release: tokio::sync::watch::Sender::new(0),
            requests: Mutex::default(),
            subscriptions: Mutex::default(),
            delivery: Mutex::new(DeliveryConfig::default()),
            deliveries: Mutex::default(),
            base_url: format!("http://{local}"),
            http,
            outbox,
        });
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::notifications::deliver(Arc::downgrade(&inner), inbox));
        let app = crate::api::router(inner.clone());
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await;
        });
        Ok(Self {
            inner,
            shutdown: Arc::new(shutdown),
        })
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// The base URL: the token endpoint is `{url}/{tenant}/oauth2/v2.0/token`, Graph is `{url}/v1.0`.
    pub fn url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.inner.base_url)
    }

    pub fn token_url(&self) -> String {
        let tenant = lock(&self.inner.config).tenant_id;
        format!("{}/{tenant}/oauth2/v2.0/token", self.inner.base_url)
    }

    /// The environment that points entra-sync's worker at this simulator, as an operator would
    /// set it for a real tenant: the tenant, the app registration and its secret, the token
    /// authority and the Graph endpoint.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let config = self.config();
        let mut env = vec![
            ("AZURE_TENANT_ID", config.tenant_id.to_string()),
            ("AZURE_CLIENT_ID", config.client_id.to_string()),
            ("AZURE_AUTHORITY_HOST", self.url().to_owned()),
            ("MICROSOFT_GRAPH_ENDPOINT", self.graph_url()),
        ];
        if let Some(secret) = config.client_secret {
            env.push(("AZURE_CLIENT_SECRET", secret));
        }
        env
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.inner.config).clone()
    }

    pub fn set_config(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut lock(&self.inner.config));
    }

    /// Changes the tenant; the change notifications it causes go to the subscribers.
    pub fn change<R>(&self, f: impl FnOnce(&mut Tenant) -> (R, Vec<Notice>)) -> R {
        self.inner.change(f)
    }

    /// Changes the tenant with one of [`Tenant`]'s mutations, which return their notifications.
    pub fn apply(&self, f: impl FnOnce(&mut Tenant) -> Vec<Notice>) {
        self.inner.change(|tenant| ((), f(tenant)));
    }

    /// Reads the tenant.
    pub fn read<R>(&self, f: impl FnOnce(&Tenant) -> R) -> R {
        f(&lock(&self.inner.tenant))
    }

    /// Replaces the whole tenant (no notifications, delta tokens start over).
    pub fn load(&self, file: TenantFile) {
        *lock(&self.inner.tenant) = Tenant::from_file(file);
        lock(&self.inner.delta_sessions).clear();
    }

    /// Forgets every access token issued so far: the next Graph call gets 401.
    pub fn revoke_tokens(&self) {
        lock(&self.inner.tokens).clear();
    }

    pub fn add_fault(&self, fault: Fault) {
        lock(&self.inner.faults).push(fault);
    }

    /// Clears every fault, and lets the requests a `hold` fault keeps go on.
    pub fn clear_faults(&self) {
        self.inner.clear_faults();
    }

    /// Replication lag for a user or group, until [`Self::end_lag`] or [`Self::clear_lag`]:
    /// `getByIds` and the users listing leave it out, `GET /users/{id}` (and `GET /groups/{id}`
    /// with a group's members and owners) answer 404, while membership reads, groups delta and
    /// the app's assignments still list it.
    pub fn lag(&self, id: Uuid) {
        lock(&self.inner.lagging).start(id, None);
    }

    /// [`Self::lag`] that ends by itself `duration` from now.
    pub fn lag_for(&self, id: Uuid, duration: Duration) {
        lock(&self.inner.lagging).start(id, Some(duration));
    }

    /// Ends one object's lag: every read finds it again.
    pub fn end_lag(&self, id: Uuid) {
        lock(&self.inner.lagging).end(id);
    }

    /// Ends every lag.
    pub fn clear_lag(&self) {
        lock(&self.inner.lagging).clear();
    }

    /// The users and groups lagging now, in id order.
    pub fn lagging(&self) -> Vec<Uuid> {
        lock(&self.inner.lagging).now()
    }

    /// How many requests a `hold` fault keeps waiting now.
    pub fn held_requests(&self) -> usize {
        self.inner.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The faults still waiting for their requests: one given a number of times is gone once
    /// that many requests have arrived (a delay while it delays them).
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.inner.faults).clone()
    }

    /// Every request served so far (token and Graph endpoints; not the admin API).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).clone()
    }

    /// How many requests went to paths containing `fragment`: logical reads, each request of a
    /// JSON batch counted on its own (the batch too, as `/$batch`).
    pub fn count(&self, fragment: &str) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| r.path.contains(fragment))
            .count()
    }

    /// How many HTTP requests went to paths containing `fragment`: a JSON batch counts once (as
    /// `/$batch`), its inner requests not at all.
    pub fn http_count(&self, fragment: &str) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| !r.batch && r.path.contains(fragment))
            .count()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    pub fn set_delivery(&self, change: impl FnOnce(&mut DeliveryConfig)) {
        change(&mut lock(&self.inner.delivery));
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        lock(&self.inner.deliveries).clone()
    }

    pub fn subscriptions(&self) -> Vec<crate::notifications::SubscriptionView> {
        lock(&self.inner.subscriptions)
            .values()
            .map(Subscription::view)
            .collect()
    }

    /// Sends a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved`,
    /// `missed`) for a subscription; `subscriptionRemoved` also removes it.
    pub async fn lifecycle(&self, subscription_id: &str, event: &str) -> Option<u16> {
        crate::notifications::send_lifecycle(&self.inner, subscription_id, event).await
    }
}
