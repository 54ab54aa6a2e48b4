//! Spot prices the proxy serves itself (moto prices every type at 0.00001):
//! DescribeSpotPriceHistory in EC2's XML, one current price per instance type,
//! filtered by `InstanceType.N` and `ProductDescription.N`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use quick_xml::escape::escape;

use super::query::{Params, API_VERSION};

const PRODUCT: &str = "Linux/UNIX";

/// The answer to a DescribeSpotPriceHistory of `prices` (USD per hour by type).
pub(crate) fn history_xml(prices: &BTreeMap<String, f64>, params: &Params) -> String {
    let types = params.list("InstanceType");
    let products = params.list("ProductDescription");
    let zone = params.get("AvailabilityZone").unwrap_or("us-east-1a");
    let timestamp = iso8601(SystemTime::now());
    let items: String = prices
        .iter()
        .filter(|(t, _)| types.is_empty() || types.contains(&t.as_str()))
        .filter(|_| products.is_empty() || products.contains(&PRODUCT))
        .map(|(instance_type, price)| {
            format!(
                "<item><instanceType>{}</instanceType>\
                 <productDescription>{PRODUCT}</productDescription>\
                 <spotPrice>{price:.6}</spotPrice><timestamp>{timestamp}</timestamp>\
                 <availabilityZone>{}</availabilityZone></item>",
                escape(instance_type.as_str()),
                escape(zone)
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSpotPriceHistoryResponse \
         xmlns=\"http://ec2.amazonaws.com/doc/{API_VERSION}/\"><requestId>{}</requestId>\
         <spotPriceHistorySet>{items}</spotPriceHistorySet>\
         </DescribeSpotPriceHistoryResponse>",
        uuid::Uuid::now_v7()
    )
}

/// `t` in UTC as EC2 writes times: `2026-01-02T03:04:05.000Z`.
fn iso8601(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.000Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::xml::texts;
    use std::time::Duration;

    #[test]
    fn times_are_utc() {
        let at = |secs| iso8601(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59.000Z");
    }

    #[test]
    fn filters_by_type_and_product() {
        let prices = BTreeMap::from([("a.large".to_string(), 0.5), ("b.large".to_string(), 0.25)]);
        let history = |body: &str| {
            let xml = history_xml(&prices, &Params::parse(None, body.as_bytes()));
            let at = |name| texts(&xml, &["spotPriceHistorySet", "item", name]).unwrap();
            (at("instanceType"), at("spotPrice"))
        };
        assert_eq!(history("").0, ["a.large", "b.large"]);
        let b = history("InstanceType.1=b.large&ProductDescription.1=Linux%2FUNIX");
        assert_eq!(
            b,
            (vec!["b.large".to_string()], vec!["0.250000".to_string()])
        );
        assert!(history("ProductDescription.1=Windows").0.is_empty());
    }
}
