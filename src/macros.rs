//! Macros the layers share (tower-http's own, written again here: it does not export it).

/// `get_ref`, `get_mut` and `into_inner` for a service whose inner service is `self.inner`.
macro_rules! define_inner_service_accessors {
    () => {
        /// A reference to the inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// A mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use define_inner_service_accessors;
