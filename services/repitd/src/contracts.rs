//! The RPCs each service's contract declares, read once from the compiled descriptor set.
//!
//! A service whose crate does not implement it yet is still mounted: every RPC of its contract
//! answers UNIMPLEMENTED naming the RPC, and reflection lists it, so clients can be written against
//! the whole mesh today and learn exactly which calls work.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use prost::Message;
use prost_types::FileDescriptorSet;

/// Service name → its method names, for every service in the descriptor set.
#[derive(Debug, Clone, Default)]
pub struct ContractIndex {
    services: BTreeMap<String, BTreeSet<String>>,
}

impl ContractIndex {
    /// Indexes an encoded `FileDescriptorSet`.
    pub fn from_encoded(descriptor_set: &[u8]) -> anyhow::Result<Self> {
        let set = FileDescriptorSet::decode(descriptor_set)
            .context("failed to decode the compiled file descriptor set")?;
        let mut services = BTreeMap::new();
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                let methods = service.method.iter().map(|m| m.name().to_owned()).collect();
                services.insert(name, methods);
            }
        }
        Ok(Self { services })
    }

    /// The contract compiled into this binary.
    pub fn compiled() -> anyhow::Result<Self> {
        Self::from_encoded(repit_proto::FILE_DESCRIPTOR_SET)
    }

    /// The methods of `service`, or `None` if no contract declares it.
    pub fn methods(&self, service: &str) -> Option<&BTreeSet<String>> {
        self.services.get(service)
    }

    /// Every service the contracts declare.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Component;

    #[test]
    fn every_component_has_a_contract_with_rpcs() {
        let index = ContractIndex::compiled().expect("descriptor set decodes");
        for component in Component::ALL {
            let methods = index
                .methods(component.grpc_service())
                .expect("contract exists");
            assert!(!methods.is_empty(), "{component} declares no rpc");
        }
    }
}
