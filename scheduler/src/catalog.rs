//! Machine types, prices, capacity and spot availability, from the shipped
//! `catalog.toml` plus an optional user file. A machine id is `<type>` (spot)
//! or `<type>.od` (on-demand).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

const SHIPPED: &str = include_str!("../catalog.toml");
const ON_DEMAND_SUFFIX: &str = ".od";

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MachineType {
    #[serde(rename = "type")]
    pub name: String,
    pub provider: String,
    pub gpu_type: String,
    pub gpu_count: u32,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub spot_price: f64,
    pub on_demand_price: f64,
    pub capacity: u32,
    pub spot_availability: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Market {
    Spot,
    OnDemand,
}

/// A machine id resolved against the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub id: String,
    pub market: Market,
    pub kind: MachineType,
}

impl Machine {
    /// The same machine type on `market` (`g4dn.4xlarge.od` ↔ `g4dn.4xlarge`).
    pub fn on_market(&self, market: Market) -> Machine {
        let id = match market {
            Market::Spot => self.kind.name.clone(),
            Market::OnDemand => format!("{}{ON_DEMAND_SUFFIX}", self.kind.name),
        };
        Machine {
            id,
            market,
            kind: self.kind.clone(),
        }
    }

    /// "local.small (spot, $0.36/h)", for timelines.
    pub fn describe(&self) -> String {
        let market = match self.market {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        };
        format!("{} ({market}, ${:.2}/h)", self.id, self.price_per_hour())
    }

    pub fn price_per_hour(&self) -> f64 {
        match self.market {
            Market::Spot => self.kind.spot_price,
            Market::OnDemand => self.kind.on_demand_price,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {0}: {1}")]
    Read(String, std::io::Error),
    #[error("invalid catalog {0}: {1}")]
    Parse(String, toml::de::Error),
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    machine: Vec<MachineType>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    types: BTreeMap<String, MachineType>,
}

impl Catalog {
    /// The shipped catalog, with `user_file`'s types added or replacing those of
    /// the same name.
    pub fn load(user_file: Option<&Path>) -> Result<Self, CatalogError> {
        let mut types = BTreeMap::new();
        let shipped: File =
            toml::from_str(SHIPPED).map_err(|e| CatalogError::Parse("(shipped)".into(), e))?;
        let mut files = vec![shipped];
        if let Some(path) = user_file {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| CatalogError::Read(name.clone(), e))?;
            files.push(toml::from_str(&text).map_err(|e| CatalogError::Parse(name, e))?);
        }
        for file in files {
            for m in file.machine {
                types.insert(m.name.clone(), m);
            }
        }
        Ok(Catalog { types })
    }

    pub fn shipped() -> Self {
        Self::load(None).expect("the shipped catalog parses")
    }

    pub fn resolve(&self, id: &str) -> Option<Machine> {
        let (name, market) = match id.strip_suffix(ON_DEMAND_SUFFIX) {
            Some(name) => (name, Market::OnDemand),
            None => (id, Market::Spot),
        };
        self.types.get(name).map(|kind| Machine {
            id: id.to_string(),
            market,
            kind: kind.clone(),
        })
    }

    pub fn types(&self) -> impl Iterator<Item = &MachineType> {
        self.types.values()
    }

    /// Every machine id, for error messages.
    pub fn ids(&self) -> Vec<String> {
        self.types
            .keys()
            .flat_map(|t| [t.clone(), format!("{t}{ON_DEMAND_SUFFIX}")])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalog_resolves_both_markets() {
        let c = Catalog::shipped();
        let od = c.resolve("g4dn.12xlarge.od").unwrap();
        assert_eq!(od.market, Market::OnDemand);
        assert_eq!(od.price_per_hour(), 3.91);
        let spot = c.resolve("g4dn.4xlarge").unwrap();
        assert_eq!(spot.market, Market::Spot);
        assert_eq!(spot.price_per_hour(), 0.36);
        assert!(c.resolve("local.small.od").is_some());
        assert!(c.resolve("nope.od").is_none());
        assert_eq!(od.on_market(Market::Spot).id, "g4dn.12xlarge");
        assert_eq!(spot.describe(), "g4dn.4xlarge (spot, $0.36/h)");
        assert_eq!(
            spot.on_market(Market::OnDemand),
            c.resolve("g4dn.4xlarge.od").unwrap()
        );
    }

    #[test]
    fn a_user_file_overrides_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"[[machine]]
type = "local.small"
provider = "local"
gpu_type = "none"
gpu_count = 0
vcpus = 1
memory_gib = 1.0
spot_price = 0.0
on_demand_price = 0.5
capacity = 0
spot_availability = 0.0
"#,
        )
        .unwrap();
        let c = Catalog::load(Some(&path)).unwrap();
        assert_eq!(c.resolve("local.small.od").unwrap().kind.capacity, 0);
        assert!(c.resolve("local.large.od").is_some());
    }
}
