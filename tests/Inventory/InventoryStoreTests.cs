using Weft.Inventory;

namespace Weft.Tests.Inventory;

public class InventoryStoreTests
{
    [Fact]
    public void BeforeAnyPublish_CurrentIsTheEmptySnapshotAtVersionZero()
    {
        var store = new InventoryStore();

        Assert.Equal(0, store.Current.Version);
        Assert.Empty(store.Current.Workloads);
    }

    [Fact]
    public void EveryPublish_GetsTheNextVersion_AndBecomesCurrent()
    {
        var store = new InventoryStore();
        var seen = new List<long>();
        store.Changed += s => seen.Add(s.Version);

        var first = store.Publish(InventoryBuilder.Build([]));
        var second = store.Publish(InventoryBuilder.Build([]));

        Assert.Equal(1, first.Version);
        Assert.Equal(2, second.Version);
        Assert.Same(second, store.Current);
        Assert.True(second.LoadedAt >= first.LoadedAt);
        Assert.Equal([1L, 2L], seen);
    }

    [Fact]
    public async Task WaitForVersionAfter_CompletesWhenANewerSnapshotIsPublished()
    {
        var store = new InventoryStore();
        store.Publish(InventoryBuilder.Build([]));

        var waiting = store.WaitForVersionAfterAsync(1);
        Assert.False(waiting.IsCompleted);
        store.Publish(InventoryBuilder.Build([]));

        var next = await waiting.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(2, next.Version);
        Assert.Equal(2, (await store.WaitForVersionAfterAsync(0)).Version);
    }

    [Fact]
    public void AFailingChangedHandler_DoesNotStopThePublishOrTheOtherHandlers()
    {
        var store = new InventoryStore();
        var reached = false;
        store.Changed += _ => throw new InvalidOperationException("subscriber bug");
        store.Changed += _ => reached = true;

        store.Publish(InventoryBuilder.Build([]));

        Assert.True(reached);
        Assert.Equal(1, store.Current.Version);
    }
}
