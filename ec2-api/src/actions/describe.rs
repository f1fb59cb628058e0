//! What the Describe actions share: the ids asked for, MaxResults and
//! NextToken, `Filter.N`; NotFound for an asked id that names nothing; and
//! the answer, the named and matching items sorted by id, one page of them.

use std::collections::BTreeMap;

use super::ids::IdKind;
use super::Ctx;
use crate::error::Result;
use crate::filter::Filters;
use crate::page::Page;
use crate::xml::Xml;

/// The tags of items that have none.
pub static NO_TAGS: BTreeMap<String, String> = BTreeMap::new();

/// What a Describe action is asked.
pub struct Describe {
    /// The ids of `<param>.N` (empty: all).
    pub ids: Vec<String>,
    pub page: Page,
    pub filters: Filters,
}

impl Describe {
    /// Reads the ids of `kind` (checked), MaxResults/NextToken and the
    /// filters `allowed` (and the tag filters), then stops a DryRun.
    pub fn parse(ctx: &Ctx<'_>, kind: &IdKind, allowed: &[&str]) -> Result<Describe> {
        let ids = kind.list(ctx.params)?;
        let page = Page::parse(ctx.params, !ids.is_empty(), kind.list_name, 5)?;
        let filters = Filters::parse(ctx.params, allowed, true)?;
        ctx.gate()?;
        Ok(Describe { ids, page, filters })
    }

    /// `<Kind>.NotFound` for the first asked id no item has.
    pub fn check_found<T>(
        &self,
        kind: &IdKind,
        items: &[T],
        id_of: impl Fn(&T) -> String,
    ) -> Result<()> {
        match self
            .ids
            .iter()
            .find(|id| !items.iter().any(|i| id_of(i) == **id))
        {
            Some(missing) => Err(kind.not_found(missing)),
            None => Ok(()),
        }
    }

    /// Whether `id` is asked for (every id is when none is named).
    fn named(&self, id: &str) -> bool {
        self.ids.is_empty() || self.ids.iter().any(|i| i == id)
    }

    /// The items named and passing the filters (`field` answers an item's
    /// values for a filter), sorted by id; one page of them and the next
    /// page's token.
    pub fn select<T>(
        &self,
        mut items: Vec<T>,
        id_of: impl Fn(&T) -> String,
        field: impl Fn(&T, &str) -> Vec<String>,
        tags: impl Fn(&T) -> &BTreeMap<String, String>,
    ) -> (Vec<T>, Option<String>) {
        items.retain(|i| self.named(&id_of(i)));
        items.retain(|i| self.filters.matches(|f| field(i, f), tags(i)));
        items.sort_by_key(&id_of);
        self.page.apply(items, id_of)
    }
}

/// The answer of a paged Describe action: the set `name` of `items`
/// (written by `item`) and the next page's token.
pub fn page_answer<T>(
    name: &str,
    items: &[T],
    next: Option<String>,
    item: impl FnMut(&mut Xml, &T),
) -> Xml {
    let mut x = Xml::new();
    x.set(name, items, item);
    x.opt("nextToken", next);
    x
}
