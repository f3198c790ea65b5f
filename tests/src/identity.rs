//! Signed-in clients for end-to-end tests: a tutor account made through the real user service,
//! and channels that send its access token with every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use repit_proto::repit::user::v1 as user_pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().expect("a token is ASCII"))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// `message` as a request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

/// A channel whose every call carries one account's access token.
pub type SignedInChannel = InterceptedService<Channel, Bearer>;

/// An account signed in through the user service.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    /// The login email (its password is [`PASSWORD`]).
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl Account {
    /// `channel`, sending this account's access token.
    pub fn on(&self, channel: Channel) -> SignedInChannel {
        InterceptedService::new(channel, Bearer::new(&self.access_token))
    }
}

/// A channel to a server that listens at `url` (connected lazily, so a test can build it first).
pub fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_lazy()
}

/// The password of every account these helpers sign up.
pub const PASSWORD: &str = "correct horse battery staple";

/// Signs up a new tutor (a fresh email, [`PASSWORD`]) and returns the signed-in account.
pub async fn sign_up_tutor(channel: Channel, display_name: &str) -> Account {
    let email = format!("tutor-{}@example.test", uuid::Uuid::new_v4());
    sign_up_tutor_as(channel, display_name, &email).await
}

/// Signs up a new tutor with `email` and [`PASSWORD`] and returns the signed-in account.
pub async fn sign_up_tutor_as(channel: Channel, display_name: &str, email: &str) -> Account {
    let answer = UserServiceClient::new(channel)
        .sign_up_tutor(user_pb::SignUpTutorRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            credentials: Some(user_pb::sign_up_tutor_request::Credentials::EmailPassword(
                user_pb::EmailPassword {
                    email: email.to_owned(),
                    password: PASSWORD.to_owned(),
                },
            )),
            display_name: display_name.to_owned(),
            time_zone: "Europe/Moscow".to_owned(),
            language: repit_proto::repit::common::v1::Language::En as i32,
            client_name: "end-to-end test".to_owned(),
        })
        .await
        .expect("sign-up works")
        .into_inner();
    let tokens = answer.tokens.expect("sign-up issues tokens");
    Account {
        user_id: answer.user.expect("the account").user_id,
        email: email.to_owned(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    }
}

/// `founder` founds a school named `name`, becoming its admin and one of its tutors: the school
/// id, and the founder's refreshed tokens, whose access token carries those grants.
pub async fn found_school(
    channel: Channel,
    founder: &Account,
    name: &str,
) -> (String, user_pb::IssuedTokens) {
    let mut users = UserServiceClient::new(channel);
    let school_id = users
        .create_school(bearer(
            user_pb::CreateSchoolRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                name: name.to_owned(),
            },
            &founder.access_token,
        ))
        .await
        .expect("the tutor founds a school")
        .into_inner()
        .school
        .expect("the school")
        .school_id;
    let tokens = users
        .refresh_token(user_pb::RefreshTokenRequest {
            refresh_token: founder.refresh_token.clone(),
        })
        .await
        .expect("the founder's refresh")
        .into_inner()
        .tokens
        .expect("tokens");
    (school_id, tokens)
}
