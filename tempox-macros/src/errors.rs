//! Collects every error of one attribute so all are reported in one pass.

use proc_macro2::TokenStream;
use quote::ToTokens;

/// An accumulator of spanned errors.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records an error spanned at `tokens`.
    pub(crate) fn push(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push_error(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at `span`.
    pub(crate) fn push_at(&mut self, span: proc_macro2::Span, message: impl std::fmt::Display) {
        self.push_error(syn::Error::new(span, message));
    }

    /// Records a ready-made error.
    pub(crate) fn push_error(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(all) => all.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Records every error of `other`, after those already recorded.
    pub(crate) fn append(&mut self, other: Errors) {
        if let Some(e) = other.combined {
            self.push_error(e);
        }
    }

    /// Whether any error was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// The errors as `compile_error!` invocations (empty if none).
    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.combined
            .map(|e| e.to_compile_error())
            .unwrap_or_default()
    }
}
