//! What every JMAP store backend must do (the redb one here; the shared AWS one in
//! `crate::spool::aws::tests`, against moto_server).

use super::*;

pub(crate) fn states_and_changes(store: &Store) {
    let mut push = store.subscribe();
    store
        .write(|tx| {
            tx.put("a", T_EMAIL, "M1", &serde_json::json!({"x": 1}))?;
            tx.touch("a", "Email", "M1", Kind::Created);
            Ok(())
        })
        .unwrap();
    store
        .write(|tx| {
            tx.touch("a", "Email", "M1", Kind::Updated);
            tx.touch("b", "Email", "M9", Kind::Created);
            Ok(())
        })
        .unwrap();
    let rx = store.read().unwrap();
    assert_eq!(rx.state("a", "Email").unwrap(), 2);
    assert_eq!(rx.state("b", "Email").unwrap(), 1);
    assert_eq!(rx.state("a", "Mailbox").unwrap(), 0);
    let changes = rx.changes("a", "Email", 1).unwrap();
    assert_eq!(changes, vec![(2, vec![("M1".to_string(), Kind::Updated)])]);
    assert_eq!(rx.list::<serde_json::Value>("a", T_EMAIL).unwrap().len(), 1);
    assert!(rx
        .list::<serde_json::Value>("b", T_EMAIL)
        .unwrap()
        .is_empty());
    let first = push.try_recv().unwrap();
    assert_eq!(first.account, "a");
    assert_eq!(first.changed["Email"], "s1");
    // A failed write changes nothing.
    let failed: Result<()> = store.write(|tx| {
        tx.touch("a", "Email", "M1", Kind::Destroyed);
        anyhow::bail!("no")
    });
    assert!(failed.is_err());
    assert_eq!(store.read().unwrap().state("a", "Email").unwrap(), 2);
}

#[test]
fn redb_states_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    states_and_changes(&Store::open(&dir.path().join("jmap.redb")).unwrap());
}
