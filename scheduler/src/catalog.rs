//! Machine types, prices, capacity and spot availability, from the shipped
//! `catalog.toml` plus an optional user file. A machine id is `<type>` (spot)
//! or `<type>.od` (on-demand). A cloud provider may quote live spot prices
//! ([`SpotQuotes`]), which then price its types.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

const SHIPPED: &str = include_str!("../catalog.toml");
const ON_DEMAND_SUFFIX: &str = ".od";

/// A machine id's type name and market (`g4dn.4xlarge.od`: on-demand).
pub fn split_id(id: &str) -> (&str, Market) {
    match id.strip_suffix(ON_DEMAND_SUFFIX) {
        Some(name) => (name, Market::OnDemand),
        None => (id, Market::Spot),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MachineType {
    #[serde(rename = "type")]
    pub name: String,
    pub provider: String,
    pub gpu_type: String,
    pub gpu_count: u32,
    pub vcpus: u32,
    pub memory_gib: f64,
    /// A cloud type's typical spot price until its provider quotes one.
    pub spot_price: f64,
    pub on_demand_price: f64,
    /// How many may run at once (a cloud's own limits decide for its types).
    #[serde(default)]
    pub capacity: u32,
    /// The emulated market's fulfilment probability (local types).
    #[serde(default)]
    pub spot_availability: f64,
}

/// Live spot prices (USD per hour) by machine type, as a cloud provider
/// quotes them; shared by every clone of the catalog.
#[derive(Debug, Clone, Default)]
pub struct SpotQuotes(Arc<RwLock<HashMap<String, f64>>>);

impl SpotQuotes {
    pub fn set(&self, machine_type: &str, usd_per_hour: f64) {
        self.0
            .write()
            .expect("spot quotes lock")
            .insert(machine_type.to_string(), usd_per_hour);
    }

    fn get(&self, machine_type: &str) -> Option<f64> {
        self.0
            .read()
            .expect("spot quotes lock")
            .get(machine_type)
            .copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
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

/// A provider's on-demand prices by machine type.
#[derive(Debug, Clone, Copy)]
pub struct OnDemandPrices<'a> {
    pub provider: &'a str,
    pub prices: &'a HashMap<String, f64>,
}

/// Sets the on-demand prices of the provider's types that the table lists.
fn price_on_demand(types: &mut BTreeMap<String, MachineType>, table: OnDemandPrices<'_>) {
    let ours = types.values_mut().filter(|k| k.provider == table.provider);
    for kind in ours {
        if let Some(&price) = table.prices.get(&kind.name) {
            kind.on_demand_price = price;
        }
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    machine: Vec<MachineType>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    types: BTreeMap<String, MachineType>,
    spot_quotes: SpotQuotes,
}

impl Catalog {
    /// The shipped catalog, with `user_file`'s types added or replacing those of
    /// the same name.
    pub fn load(user_file: Option<&Path>) -> Result<Self, CatalogError> {
        Self::load_priced(user_file, None)
    }

    /// The shipped catalog, the on-demand prices of one provider's types set
    /// from `prices` (a cloud's table for its region), then `user_file`'s
    /// types added or replacing those of the same name.
    pub fn load_priced(
        user_file: Option<&Path>,
        prices: Option<OnDemandPrices<'_>>,
    ) -> Result<Self, CatalogError> {
        let shipped: File =
            toml::from_str(SHIPPED).map_err(|e| CatalogError::Parse("(shipped)".into(), e))?;
        let mut types: BTreeMap<_, _> = shipped
            .machine
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        if let Some(prices) = prices {
            price_on_demand(&mut types, prices);
        }
        if let Some(path) = user_file {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| CatalogError::Read(name.clone(), e))?;
            let file: File = toml::from_str(&text).map_err(|e| CatalogError::Parse(name, e))?;
            types.extend(file.machine.into_iter().map(|m| (m.name.clone(), m)));
        }
        Ok(Catalog {
            types,
            spot_quotes: SpotQuotes::default(),
        })
    }

    pub fn shipped() -> Self {
        Self::load(None).expect("the shipped catalog parses")
    }

    pub fn resolve(&self, id: &str) -> Option<Machine> {
        let (name, market) = split_id(id);
        self.types.get(name).map(|kind| Machine {
            id: id.to_string(),
            market,
            kind: self.quoted(kind),
        })
    }

    /// Every machine type, spot prices as quoted now.
    pub fn types(&self) -> impl Iterator<Item = MachineType> + '_ {
        self.types.values().map(|kind| self.quoted(kind))
    }

    fn quoted(&self, kind: &MachineType) -> MachineType {
        let mut kind = kind.clone();
        if let Some(price) = self.spot_quotes.get(&kind.name) {
            kind.spot_price = price;
        }
        kind
    }

    /// Where a provider quotes live spot prices for this catalog.
    pub fn spot_quotes(&self) -> &SpotQuotes {
        &self.spot_quotes
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

    #[test]
    fn quoted_spot_prices_price_every_clone() {
        let mut c = Catalog::shipped();
        let copy = c.clone();
        copy.spot_quotes().set("g4dn.4xlarge", 0.5);
        assert_eq!(c.resolve("g4dn.4xlarge").unwrap().price_per_hour(), 0.5);
        assert_eq!(c.resolve("g4dn.4xlarge.od").unwrap().price_per_hour(), 1.20);
        let listed = c.types().find(|t| t.name == "g4dn.4xlarge").unwrap();
        assert_eq!(listed.spot_price, 0.5);
        let prices = HashMap::from([("g4dn.4xlarge".to_string(), 1.204)]);
        let table = OnDemandPrices {
            provider: "ec2",
            prices: &prices,
        };
        c = Catalog::load_priced(None, Some(table)).unwrap();
        assert_eq!(
            c.resolve("g4dn.4xlarge.od").unwrap().price_per_hour(),
            1.204
        );
        assert_eq!(
            c.resolve("g4dn.12xlarge.od").unwrap().price_per_hour(),
            3.91
        );
    }
}
