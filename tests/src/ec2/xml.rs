//! Just enough XML for EC2's answers: the texts at a path, and each
//! instance's `instanceState` rewritten. The rewrite relies on an instance
//! item naming its `instanceId` before its `instanceState`, as EC2 and moto do.

use anyhow::Result;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use super::states::InstanceState;

/// The texts of the elements whose path ends with `path`, in document order.
pub fn texts(xml: &str, path: &[&str]) -> Result<Vec<String>> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut found = Vec::new();
    loop {
        match reader.read_event()? {
            Event::Start(e) => stack.push(local_name(&e)),
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) if ends_with(&stack, path) => found.push(t.unescape()?.into_owned()),
            Event::Eof => return Ok(found),
            _ => {}
        }
    }
}

/// `xml` with the `instanceState` of each instance item replaced by
/// `shown(instance id, state moto gave)`.
pub(crate) fn rewrite_states(
    xml: &str,
    shown: impl Fn(&str, InstanceState) -> InstanceState,
) -> Result<String> {
    let mut reader = Reader::from_str(xml);
    let mut writer = Writer::new(Vec::new());
    let mut stack: Vec<String> = Vec::new();
    // The depth of the item that named an instance id, and the id.
    let mut item: Option<(usize, String)> = None;
    loop {
        let event = reader.read_event()?;
        match &event {
            Event::Start(e) => {
                let name = local_name(e);
                if let Some((_, id)) = item.as_ref().filter(|(depth, _)| *depth + 1 == stack.len())
                {
                    if name == "instanceState" {
                        let (code, state) = read_state(&mut reader)?;
                        write_state(&mut writer, &code, &state, |s| shown(id, s))?;
                        continue;
                    }
                }
                stack.push(name);
            }
            Event::End(_) => {
                stack.pop();
                item = item.filter(|(depth, _)| *depth < stack.len());
            }
            Event::Text(t) if ends_with(&stack, &["item", "instanceId"]) => {
                item = Some((stack.len() - 2, t.unescape()?.into_owned()));
            }
            Event::Eof => break,
            _ => {}
        }
        writer.write_event(event)?;
    }
    Ok(String::from_utf8(writer.into_inner())?)
}

/// The code and name inside an `instanceState`, read through its end.
fn read_state(reader: &mut Reader<&[u8]>) -> Result<(String, String)> {
    let (mut code, mut name, mut inside) = (String::new(), String::new(), String::new());
    loop {
        match reader.read_event()? {
            Event::Start(e) => inside = local_name(&e),
            Event::Text(t) if inside == "code" => code = t.unescape()?.into_owned(),
            Event::Text(t) if inside == "name" => name = t.unescape()?.into_owned(),
            Event::End(e) if e.local_name().as_ref() == b"instanceState" => {
                return Ok((code, name))
            }
            Event::End(_) => inside.clear(),
            Event::Eof => anyhow::bail!("the XML ends inside an instanceState"),
            _ => {}
        }
    }
}

/// Writes an `instanceState`: `shown` of the state named, or as it was when
/// the name is not a state.
fn write_state(
    writer: &mut Writer<Vec<u8>>,
    code: &str,
    name: &str,
    shown: impl Fn(InstanceState) -> InstanceState,
) -> Result<()> {
    let (code, name) = match InstanceState::from_name(name) {
        Some(state) => {
            let state = shown(state);
            (state.code().to_string(), state.name().to_string())
        }
        None => (code.to_string(), name.to_string()),
    };
    writer.write_event(Event::Start(BytesStart::new("instanceState")))?;
    for (tag, text) in [("code", code), ("name", name)] {
        writer.write_event(Event::Start(BytesStart::new(tag)))?;
        writer.write_event(Event::Text(BytesText::new(&text)))?;
        writer.write_event(Event::End(BytesEnd::new(tag)))?;
    }
    writer.write_event(Event::End(BytesEnd::new("instanceState")))?;
    Ok(())
}

fn local_name(e: &BytesStart) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}

fn ends_with(stack: &[String], path: &[&str]) -> bool {
    stack.len() >= path.len() && stack[stack.len() - path.len()..].iter().eq(path.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moto's DescribeInstances, trimmed: nested items before the state.
    const DESCRIBED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><reservationSet><item><reservationId>r-1</reservationId><groupSet/><instancesSet><item><blockDeviceMapping><item><deviceName>/dev/sda1</deviceName></item></blockDeviceMapping><stateReason><code/><message/></stateReason><tagSet><item><key>a&amp;b</key><value>x</value></item></tagSet><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState><reason/></item><item><instanceId>i-2</instanceId><imageId>ami-1</imageId><instanceState><code>80</code><name>stopped</name></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;

    #[test]
    fn texts_follow_the_path() {
        let ids = texts(DESCRIBED, &["instancesSet", "item", "instanceId"]).unwrap();
        assert_eq!(ids, ["i-1", "i-2"]);
        let states = texts(DESCRIBED, &["item", "instanceState", "name"]).unwrap();
        assert_eq!(states, ["running", "stopped"]);
        assert_eq!(
            texts(DESCRIBED, &["tagSet", "item", "key"]).unwrap(),
            ["a&b"]
        );
    }

    #[test]
    fn only_the_instances_own_state_is_rewritten() {
        let rewritten = rewrite_states(DESCRIBED, |id, state| match (id, state) {
            ("i-1", InstanceState::Running) => InstanceState::Pending,
            _ => state,
        })
        .unwrap();
        let expected = DESCRIBED.replace(
            "<code>16</code><name>running</name>",
            "<code>0</code><name>pending</name>",
        );
        assert_eq!(rewritten, expected);
    }

    #[test]
    fn a_state_of_an_item_without_id_is_left_alone() {
        let xml = "<r><item><instanceState><code>16</code><name>running</name></instanceState>\
            </item><item><instanceId>i-1</instanceId></item></r>";
        let rewritten = rewrite_states(xml, |_, _| InstanceState::Stopping).unwrap();
        assert_eq!(rewritten, xml);
    }
}
