use deferred_cache::{Cache, Source};

#[test]
fn smoke() {
    futures::executor::block_on(async {
        let cache: Cache<u32, u32> = Cache::bounded(4);
        for i in 0..100u32 {
            let (v, s) = cache.get_with(i, || async move { Ok(i * 2) }).with_source().await;
            assert_eq!((v, s), (Ok(i * 2), Source::Loaded));
        }
        assert!(cache.len() <= 4, "len {}", cache.len());
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        let st = cache.stats();
        assert_eq!(st.loads_ok, 100);
        assert_eq!(st.evicted, 96);
    });
}
