using System.Globalization;
using System.Net;
using System.Text;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

/// <summary>
/// A reload of the standalone file applies only the objects that differ from the ones held: what did not change
/// keeps its instance in the next snapshot, and a file that fails halfway changes nothing.
/// </summary>
public sealed class FileInventoryDiffTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-inventory-diff-").FullName;
    private readonly InventoryStore _store = new();

    private string InventoryPath => Path.Combine(_directory, "inventory.yaml");

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string Inventory(int pods, Func<int, string?>? ipOf = null, string tail = "")
    {
        var text = new StringBuilder("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: demo, labels: {weft.dev/mesh: enabled}}

            """);
        for (var i = 0; i < pods; i++)
        {
            var ip = ipOf?.Invoke(i) ?? $"10.1.{i / 250}.{(i % 250) + 1}";
            text.Append(CultureInfo.InvariantCulture, $$$"""
                ---
                apiVersion: v1
                kind: Pod
                metadata: {name: p{{{i}}}, namespace: demo, labels: {app: a}}
                spec: {nodeName: node{{{i % 3}}}}
                status: {podIP: {{{ip}}}, podIPs: [{ip: {{{ip}}}}]}

                """);
        }

        return text.Append(tail).ToString();
    }

    [Fact]
    public void OneChangedPod_IsTheOnlyWorkloadReplaced_AndADeletedPodIsGone()
    {
        File.WriteAllText(InventoryPath, Inventory(200));
        using var source = FileInventorySource.Start(InventoryPath, _store, new FileInventorySourceOptions { PollInterval = TimeSpan.FromHours(1) });
        var before = _store.Current;
        Assert.Equal(200, before.WorkloadCount);

        // p5 moves to a new address; p199 is gone (the file lists 199 pods).
        File.WriteAllText(InventoryPath, Inventory(199, i => i == 5 ? "10.9.9.9" : null));
        Assert.True(source.Reload());
        var after = _store.Current;

        Assert.True(after.Version > before.Version);
        Assert.Equal(199, after.WorkloadCount);
        Assert.True(after.TryGetWorkload(IPAddress.Parse("10.9.9.9"), out var moved));
        Assert.Equal("p5", moved.Name);
        Assert.False(after.TryGetWorkload(IPAddress.Parse("10.1.0.6"), out _));
        Assert.False(after.TryGetWorkload(IPAddress.Parse("10.1.0.200"), out _));
        for (var i = 0; i < 199; i++)
        {
            if (i == 5)
            {
                continue;
            }

            var address = IPAddress.Parse($"10.1.{i / 250}.{(i % 250) + 1}");
            Assert.True(before.TryGetWorkload(address, out var old));
            Assert.True(after.TryGetWorkload(address, out var now));
            Assert.Same(old, now);
        }

        // The snapshot a reader held before the reload still answers as it did.
        Assert.True(before.TryGetWorkload(IPAddress.Parse("10.1.0.6"), out var stale));
        Assert.Equal("p5", stale.Name);
        Assert.Equal(200, before.Workloads.Length);
    }

    [Fact]
    public void FileBrokenAfterAChange_KeepsTheLastSnapshot_AndTheNextGoodFileIsComparedWithIt()
    {
        File.WriteAllText(InventoryPath, Inventory(20));
        using var source = FileInventorySource.Start(InventoryPath, _store, new FileInventorySourceOptions { PollInterval = TimeSpan.FromHours(1) });
        var good = _store.Current;

        // p3 changed early in the file, then a malformed document: nothing of it may be applied.
        File.WriteAllText(InventoryPath, Inventory(20, i => i == 3 ? "10.9.9.3" : null, tail: "---\nkind: [unclosed\n"));
        Assert.False(source.Reload());
        Assert.Same(good, _store.Current);
        Assert.NotNull(source.LastError);

        File.WriteAllText(InventoryPath, Inventory(20, i => i == 4 ? "10.9.9.4" : null));
        Assert.True(source.Reload());
        var now = _store.Current;
        Assert.True(now.TryGetWorkload(IPAddress.Parse("10.1.0.4"), out var p3));
        Assert.Equal("p3", p3.Name);
        Assert.False(now.TryGetWorkload(IPAddress.Parse("10.9.9.3"), out _));
        Assert.True(now.TryGetWorkload(IPAddress.Parse("10.9.9.4"), out var p4));
        Assert.Equal("p4", p4.Name);
        Assert.Equal(20, now.WorkloadCount);
    }
}
