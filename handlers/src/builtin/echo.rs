//! `echo`: returns the payload unchanged.

use async_trait::async_trait;

use crate::{Handler, HandlerError, Message, Output};

/// Returns each message's payload as its only output.
#[derive(Debug, Default)]
pub struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        Ok(vec![Output::new(msg.payload.clone())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_the_payload() {
        let out = Echo.call(&Message::new("hi")).await.unwrap();
        assert_eq!(out, vec![Output::new("hi")]);
    }
}
