//! The small template language of class YAML: `${scope.key}` placeholders.
//!
//! Scopes: `secret` (a key of the Connector's Secret), `params` (a Connector parameter, auth
//! parameters included) and `connector` (`address`, `name`, `namespace`). `$$` is a literal `$`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unterminated placeholder in '{0}'")]
    Unterminated(String),
    #[error("placeholder '${{{0}}}' must be scope.key with scope secret, params or connector")]
    BadPlaceholder(String),
    #[error("'${{{0}}}' has no value")]
    Missing(String),
}

/// A placeholder's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Secret,
    Params,
    Connector,
}

/// Expands a template; `lookup` answers `(scope, key)`.
pub fn render<F>(template: &str, mut lookup: F) -> Result<String, TemplateError>
where
    F: FnMut(Scope, &str) -> Option<String>,
{
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| TemplateError::Unterminated(template.to_owned()))?;
            let placeholder = &r[..end];
            let (scope, key) = parse_placeholder(placeholder)?;
            let value =
                lookup(scope, key).ok_or_else(|| TemplateError::Missing(placeholder.to_owned()))?;
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Lists the placeholders of a template, checking their syntax.
pub fn placeholders(template: &str) -> Result<Vec<(Scope, String)>, TemplateError> {
    let mut found = Vec::new();
    render(template, |scope, key| {
        found.push((scope, key.to_owned()));
        Some(String::new())
    })?;
    Ok(found)
}

fn parse_placeholder(p: &str) -> Result<(Scope, &str), TemplateError> {
    let bad = || TemplateError::BadPlaceholder(p.to_owned());
    let (scope, key) = p.trim().split_once('.').ok_or_else(bad)?;
    if key.is_empty() {
        return Err(bad());
    }
    let scope = match scope {
        "secret" => Scope::Secret,
        "params" => Scope::Params,
        "connector" => Scope::Connector,
        _ => return Err(bad()),
    };
    Ok((scope, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(scope: Scope, key: &str) -> Option<String> {
        match (scope, key) {
            (Scope::Secret, "token") => Some("t0k".into()),
            (Scope::Params, "repository") => Some("team/app.git".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_placeholders_and_dollars() {
        assert_eq!(
            render("/${params.repository}/info/refs", lookup).unwrap(),
            "/team/app.git/info/refs"
        );
        assert_eq!(
            render("Bearer ${secret.token} $$5 $x", lookup).unwrap(),
            "Bearer t0k $5 $x"
        );
    }

    #[test]
    fn errors_name_the_placeholder() {
        assert_eq!(
            render("${secret.nope}", lookup).unwrap_err(),
            TemplateError::Missing("secret.nope".into())
        );
        assert!(matches!(
            render("${token}", lookup).unwrap_err(),
            TemplateError::BadPlaceholder(_)
        ));
        assert!(matches!(
            render("${secret.token", lookup).unwrap_err(),
            TemplateError::Unterminated(_)
        ));
    }

    #[test]
    fn lists_placeholders() {
        let p = placeholders("${secret.a}:${params.b}").unwrap();
        assert_eq!(
            p,
            vec![(Scope::Secret, "a".into()), (Scope::Params, "b".into())]
        );
    }
}
