//! PostgreSQL statements for what a LiteLLM release's `schema.prisma` declares, derived from the
//! schema itself: the published `litellm-proxy-extras` migrations can lag behind the `litellm`
//! release whose proxy the tests run (0.4.110's lack tables and columns that 1.110.2 writes).
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so applied after the migrations it adds only
//! what they lack: enums and their values, tables with their primary keys, columns with Prisma's
//! PostgreSQL types, nullability and defaults, unique and plain indexes, named as Prisma names
//! them. Foreign keys are left out (LiteLLM's relations are read through the engine, which does
//! not need them) and so is a column whose type differs from the schema's (it is left as it is).

use std::collections::BTreeSet;

/// The statements, one per line, in an order PostgreSQL accepts (types, tables, columns, indexes).
pub fn statements(schema: &str) -> Vec<String> {
    let blocks = blocks(schema);
    let enums: BTreeSet<&str> = blocks
        .iter()
        .filter(|b| b.kind == "enum")
        .map(|b| b.name)
        .collect();
    let mut out = Vec::new();
    for block in blocks.iter().filter(|b| b.kind == "enum") {
        let values: Vec<String> = block.lines.iter().map(|v| literal(v)).collect();
        out.push(format!(
            "DO $$ BEGIN CREATE TYPE \"{}\" AS ENUM ({}); EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
            block.name,
            values.join(", ")
        ));
        for value in values {
            out.push(format!(
                "ALTER TYPE \"{}\" ADD VALUE IF NOT EXISTS {value};",
                block.name
            ));
        }
    }
    let models: BTreeSet<&str> = blocks
        .iter()
        .filter(|b| b.kind == "model")
        .map(|b| b.name)
        .collect();
    for block in blocks.iter().filter(|b| b.kind == "model") {
        out.extend(model_statements(block, &enums, &models));
    }
    out
}

struct Block<'a> {
    kind: &'a str,
    name: &'a str,
    /// The block's lines, trimmed, comments removed, empty ones left out.
    lines: Vec<&'a str>,
}

fn blocks(schema: &str) -> Vec<Block<'_>> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in schema.lines().map(without_comment).map(str::trim) {
        if let Some(block) = current.as_mut() {
            if line == "}" {
                blocks.extend(current.take());
            } else if !line.is_empty() {
                block.lines.push(line);
            }
        } else if let Some(header) = line.strip_suffix('{') {
            let mut words = header.split_whitespace();
            if let (Some(kind), Some(name)) = (words.next(), words.next()) {
                current = Some(Block {
                    kind,
                    name,
                    lines: Vec::new(),
                });
            }
        }
    }
    blocks
}

/// The line before a `//` that is not inside a string.
fn without_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

struct Field<'a> {
    name: &'a str,
    column: String,
    sql_type: String,
    not_null: bool,
    default: Option<String>,
    id: bool,
    unique: bool,
}

fn model_statements(block: &Block, enums: &BTreeSet<&str>, models: &BTreeSet<&str>) -> Vec<String> {
    let table = block
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("@@map"))
        .and_then(first_string)
        .unwrap_or(block.name);
    let fields: Vec<Field> = block
        .lines
        .iter()
        .filter(|l| !l.starts_with("@@"))
        .filter_map(|l| field(l, enums, models))
        .collect();
    let column_of = |name: &str| -> String {
        let name = name.split('(').next().unwrap_or(name).trim();
        fields
            .iter()
            .find(|f| f.name == name)
            .map_or_else(|| name.to_owned(), |f| f.column.clone())
    };
    let mut key: Vec<String> = fields
        .iter()
        .filter(|f| f.id)
        .map(|f| f.column.clone())
        .collect();
    let mut indexes = Vec::new();
    for field in fields.iter().filter(|f| f.unique) {
        indexes.push((
            true,
            vec![field.column.clone()],
            vec![quote(&field.column)],
            None,
        ));
    }
    for line in &block.lines {
        let (unique, rest) = if let Some(rest) = line.strip_prefix("@@unique") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("@@index") {
            (false, rest)
        } else if let Some(rest) = line.strip_prefix("@@id") {
            key = list(rest).iter().map(|n| column_of(n)).collect();
            continue;
        } else {
            continue;
        };
        let names = list(rest);
        let columns: Vec<String> = names.iter().map(|n| column_of(n)).collect();
        let keys: Vec<String> = names
            .iter()
            .zip(&columns)
            .map(|(n, c)| {
                let descending = n.replace(' ', "").contains("sort:Desc");
                format!("{}{}", quote(c), if descending { " DESC" } else { "" })
            })
            .collect();
        let map = rest
            .split_once("map:")
            .and_then(|(_, after)| first_string(after));
        indexes.push((unique, columns, keys, map));
    }

    let mut columns: Vec<String> = fields.iter().map(column_definition).collect();
    if !key.is_empty() {
        let key: Vec<String> = key.iter().map(|c| quote(c)).collect();
        columns.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote(&format!("{table}_pkey")),
            key.join(", ")
        ));
    }
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({});",
        quote(table),
        columns.join(", ")
    )];
    for field in &fields {
        out.push(format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {};",
            quote(table),
            column_definition(field)
        ));
    }
    for (unique, columns, keys, map) in indexes {
        let name = map.map_or_else(
            || {
                format!(
                    "{table}_{}_{}",
                    columns.join("_"),
                    if unique { "key" } else { "idx" }
                )
            },
            str::to_owned,
        );
        out.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {}({});",
            if unique { "UNIQUE " } else { "" },
            quote(&name),
            quote(table),
            keys.join(", ")
        ));
    }
    out
}

/// A scalar field (a relation field, whose type is another model, is none).
fn field<'a>(line: &'a str, enums: &BTreeSet<&str>, models: &BTreeSet<&str>) -> Option<Field<'a>> {
    let mut words = line.split_whitespace();
    let name = words.next()?;
    let declared = words.next()?;
    let attributes = line
        .splitn(3, char::is_whitespace)
        .nth(2)
        .unwrap_or_default();
    let base = declared.trim_end_matches(['?', '[', ']']);
    if models.contains(base) {
        return None;
    }
    let list = declared.ends_with("[]");
    let default = attribute(attributes, "@default");
    let autoincrement = default.as_deref() == Some("autoincrement()");
    let scalar = match base {
        "String" => "TEXT".to_owned(),
        "Boolean" => "BOOLEAN".to_owned(),
        "Int" if autoincrement => "SERIAL".to_owned(),
        "Int" => "INTEGER".to_owned(),
        "BigInt" if autoincrement => "BIGSERIAL".to_owned(),
        "BigInt" => "BIGINT".to_owned(),
        "Float" => "DOUBLE PRECISION".to_owned(),
        "Decimal" => "DECIMAL(65,30)".to_owned(),
        "DateTime" => "TIMESTAMP(3)".to_owned(),
        "Json" => "JSONB".to_owned(),
        "Bytes" => "BYTEA".to_owned(),
        other if enums.contains(other) => quote(other),
        _ => return None,
    };
    let sql_type = if list { format!("{scalar}[]") } else { scalar };
    let default = default.and_then(|d| default_sql(&d, &sql_type));
    Some(Field {
        name,
        column: attribute(attributes, "@map")
            .as_deref()
            .and_then(first_string)
            .map_or_else(|| name.to_owned(), str::to_owned),
        not_null: !declared.ends_with('?') && !list,
        default,
        id: has_attribute(attributes, "@id"),
        unique: has_attribute(attributes, "@unique"),
        sql_type,
    })
}

fn column_definition(field: &Field) -> String {
    let mut definition = format!("{} {}", quote(&field.column), field.sql_type);
    if field.not_null {
        definition.push_str(" NOT NULL");
    }
    if let Some(default) = &field.default {
        definition.push_str(" DEFAULT ");
        definition.push_str(default);
    }
    definition
}

/// A Prisma default as PostgreSQL's; none for the ones Prisma computes itself (`uuid()`, `cuid()`)
/// or a serial column's.
fn default_sql(default: &str, sql_type: &str) -> Option<String> {
    let default = default.trim();
    if default == "now()" {
        return Some("CURRENT_TIMESTAMP".to_owned());
    }
    if let Some(expression) = default.strip_prefix("dbgenerated(") {
        return first_string(expression).map(|e| e.replace("\\\"", "\""));
    }
    if default.ends_with("()") {
        return None;
    }
    if let Some(items) = default.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let items: Vec<String> = items
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(value_sql)
            .collect();
        return Some(format!("ARRAY[{}]::{sql_type}", items.join(", ")));
    }
    Some(value_sql(default))
}

/// A literal: numbers and booleans as they are; strings and enum values quoted.
fn value_sql(value: &str) -> String {
    if value == "true" || value == "false" || value.parse::<f64>().is_ok() {
        value.to_owned()
    } else {
        literal(value.trim_matches('"'))
    }
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Whether `name` (`@id`, `@unique`) stands among the attributes as a word of its own.
fn has_attribute(attributes: &str, name: &str) -> bool {
    attributes.split_whitespace().any(|word| {
        word == name
            || word
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('('))
    })
}

/// The text inside `name(...)`, parentheses balanced, strings respected.
fn attribute(attributes: &str, name: &str) -> Option<String> {
    let start = attributes
        .match_indices(&format!("{name}("))
        .find(|(i, _)| *i == 0 || attributes.as_bytes()[i - 1] != b'@')?
        .0
        + name.len()
        + 1;
    let (mut depth, mut in_string) = (1, false);
    for (offset, c) in attributes[start..].char_indices() {
        match c {
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(attributes[start..start + offset].to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// The first `"..."` in `text`.
fn first_string(text: &str) -> Option<&str> {
    let start = text.find('"')? + 1;
    let mut end = start;
    let bytes = text.as_bytes();
    while end < bytes.len() && (bytes[end] != b'"' || bytes[end - 1] == b'\\') {
        end += 1;
    }
    text.get(start..end)
}

/// The field names in `([a, b(sort: Desc)], ...)`.
fn list(text: &str) -> Vec<&str> {
    let inner = text
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(inner, _)| inner)
        .unwrap_or_default();
    let mut names = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                names.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    names.push(inner[start..].trim());
    names.retain(|n| !n.is_empty());
    names
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn a_model_becomes_its_table_columns_and_indexes() {
        let schema = r#"
enum State {
  pending
  done
}

model Delivery {
  id         String   @id @default(uuid())
  state      State    @default(pending) // where it is
  payload    Json     @default("{}")
  tags       String[] @default([])
  attempts   BigInt?  @map("tries")
  created_at DateTime @default(now())
  owner      Owner    @relation(fields: [owner_id], references: [id])
  owner_id   String   @unique

  @@index([state, created_at(sort: Desc)])
  @@unique([owner_id, attempts], map: "delivery_owner_tries")
}
"#;
        let sql = statements(schema);
        assert!(sql.contains(&"ALTER TYPE \"State\" ADD VALUE IF NOT EXISTS 'done';".to_owned()));
        assert!(sql.contains(&"CREATE TABLE IF NOT EXISTS \"Delivery\" (\"id\" TEXT NOT NULL, \"state\" \"State\" NOT NULL DEFAULT 'pending', \"payload\" JSONB NOT NULL DEFAULT '{}', \"tags\" TEXT[] DEFAULT ARRAY[]::TEXT[], \"tries\" BIGINT, \"created_at\" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, \"owner_id\" TEXT NOT NULL, CONSTRAINT \"Delivery_pkey\" PRIMARY KEY (\"id\"));".to_owned()), "{sql:#?}");
        assert!(sql.contains(&"CREATE UNIQUE INDEX IF NOT EXISTS \"Delivery_owner_id_key\" ON \"Delivery\"(\"owner_id\");".to_owned()));
        assert!(sql.contains(&"CREATE INDEX IF NOT EXISTS \"Delivery_state_created_at_idx\" ON \"Delivery\"(\"state\", \"created_at\" DESC);".to_owned()));
        assert!(sql.contains(&"CREATE UNIQUE INDEX IF NOT EXISTS \"delivery_owner_tries\" ON \"Delivery\"(\"owner_id\", \"tries\");".to_owned()));
    }
}
