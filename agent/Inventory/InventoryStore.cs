namespace Weft.Inventory;

/// <summary>
/// Holds the current <see cref="InventorySnapshot"/>. Readers take <see cref="Current"/> (one volatile read,
/// no lock); sources publish whole new snapshots, each getting the next version.
/// </summary>
internal sealed class InventoryStore
{
    private readonly object _publishGate = new();
    private InventorySnapshot _current = InventorySnapshot.Empty;
    private long _lastVersion;

    // Completed (and replaced) by every publish; waiters read it before checking Current, so none misses a version.
    private TaskCompletionSource<InventorySnapshot> _nextPublish = NewPublishSignal();

    /// <summary>The latest published snapshot; <see cref="InventorySnapshot.Empty"/> (version 0) before the first.</summary>
    public InventorySnapshot Current => Volatile.Read(ref _current);

    /// <summary>
    /// Raised after each publish, on the publishing thread; handlers should be quick. With two sources publishing
    /// at once the events may arrive out of order: a handler that cares reads <see cref="Current"/>.
    /// </summary>
    public event Action<InventorySnapshot>? Changed;

    /// <summary>Stamps the snapshot with the next version and the current time and makes it current.</summary>
    public InventorySnapshot Publish(InventorySnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        InventorySnapshot published;
        TaskCompletionSource<InventorySnapshot> signal;
        lock (_publishGate)
        {
            // The lock only orders writers (rare) so versions rise in publish order; readers never take it.
            published = snapshot.WithVersion(++_lastVersion, DateTimeOffset.UtcNow);
            Volatile.Write(ref _current, published);
            signal = Interlocked.Exchange(ref _nextPublish, NewPublishSignal());
        }

        signal.TrySetResult(published);
        RaiseChanged(published);
        return published;
    }

    /// <summary>Completes with the current snapshot as soon as its version is greater than <paramref name="afterVersion"/>.</summary>
    public async Task<InventorySnapshot> WaitForVersionAfterAsync(long afterVersion, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            var signal = Volatile.Read(ref _nextPublish);
            var current = Current;
            if (current.Version > afterVersion)
            {
                return current;
            }

            await signal.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private void RaiseChanged(InventorySnapshot published)
    {
        var handlers = Changed;
        if (handlers is null)
        {
            return;
        }

        foreach (var handler in handlers.GetInvocationList().Cast<Action<InventorySnapshot>>())
        {
            try
            {
                handler(published);
            }
            catch (Exception ex)
            {
                // One broken subscriber must not keep the others from seeing the new inventory.
                Log.Error("inventory", $"a Changed handler failed for version {published.Version}: {ex.Message}");
            }
        }
    }

    private static TaskCompletionSource<InventorySnapshot> NewPublishSignal() =>
        new(TaskCreationOptions.RunContinuationsAsynchronously);
}
