using System.Net;
using System.Text;
using Weft.Inventory;
using Weft.Scale;

namespace Weft.Tests.Scale;

/// <summary>The standalone inventory file at cluster scale: 10,000 pods load, and a bad edit of such a file loses nothing.</summary>
public sealed class LargeInventoryFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-scale-").FullName;
    private readonly InventoryStore _store = new();
    private readonly List<FileInventorySource> _sources = [];

    private string InventoryPath => Path.Combine(_directory, "inventory.yaml");

    public void Dispose()
    {
        foreach (var source in _sources)
        {
            source.Dispose();
        }

        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public void TenThousandPodFileLoadsEveryPodServiceAndEndpoint()
    {
        var cluster = new SyntheticCluster(10_000);
        WriteInventory(cluster, "");

        Start();

        var snapshot = _store.Current;
        Assert.Equal(10_000, snapshot.Workloads.Length);
        Assert.Equal(1_000, snapshot.Services.Length);
        Assert.Empty(snapshot.Warnings);
        Assert.True(snapshot.TryGetWorkload(SyntheticCluster.PodAddress(9_999), out var last));
        Assert.Equal(cluster.PodName(9_999), last.Name);
        Assert.Equal(cluster.PodNamespace(9_999), last.Namespace);
        Assert.True(snapshot.TryResolveService(new IPEndPoint(SyntheticCluster.ServiceAddress(999), SyntheticCluster.ServicePort), out var target));
        Assert.Equal(
            Enumerable.Range(9_990, 10).Select(p => new IPEndPoint(SyntheticCluster.PodAddress(p), SyntheticCluster.TargetPort)).Order(EndPointOrder.Instance),
            target.ReadyEndpoints.Order(EndPointOrder.Instance));
    }

    [Fact]
    public void MalformedEditOfALargeFileKeepsTheLastSnapshotAndNamesLineAndColumn()
    {
        var cluster = new SyntheticCluster(10_000);
        WriteInventory(cluster, "");
        var source = Start();
        var good = _store.Current;

        // The break is past the first 100,000 YAML events, where the old whole-file load gave up.
        var lines = File.ReadAllLines(InventoryPath).ToList();
        var brokenLine = lines.Count - 5;
        lines.Insert(brokenLine, "  : [unclosed");
        File.WriteAllLines(InventoryPath, lines);

        Assert.False(source.Reload());

        Assert.Equal(10_000, _store.Current.Workloads.Length);
        Assert.Equal(good.Version, _store.Current.Version);
        var error = source.LastError;
        Assert.NotNull(error);
        Assert.NotNull(error.Line);
        Assert.NotNull(error.Column);
        Assert.InRange(error.Line.Value, brokenLine - 2, brokenLine + 3);
        Assert.Contains($"{InventoryPath}:{error.Line}:{error.Column}:", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WrongFieldTypeDeepInALargeFileNamesItsLineInTheWholeFile()
    {
        var cluster = new SyntheticCluster(2_000);
        WriteInventory(cluster, """
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: broken, namespace: scale-0}
            spec:
              ports: not-a-list
            """);
        var lines = File.ReadAllLines(InventoryPath);
        var expectedLine = Array.FindIndex(lines, l => l.Contains("not-a-list", StringComparison.Ordinal)) + 1;

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal(expectedLine, failure.Line);
        Assert.Contains("Service starting at line", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DocumentNestedDeeperThanTheBoundIsRefusedWithItsPosition()
    {
        var nested = new StringBuilder("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\ndata:\n  x: ");
        nested.Append('[', InventoryYaml.MaxNesting + 10).Append('1').Append(']', InventoryYaml.MaxNesting + 10).Append('\n');
        File.WriteAllText(InventoryPath, nested.ToString());

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal(5, failure.Line);
        Assert.Contains("nested more than", failure.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void FileLargerThanTheLimitIsRefusedBeforeReadingAndTheLastSnapshotStays()
    {
        var cluster = new SyntheticCluster(100);
        WriteInventory(cluster, "");
        var source = Start(new FileInventorySourceOptions { MaxFileBytes = new FileInfo(InventoryPath).Length + 1000 });
        var good = _store.Current;

        File.AppendAllText(InventoryPath, "\n# " + new string('x', 2000) + "\n");

        Assert.False(source.Reload());
        Assert.Equal(good.Version, _store.Current.Version);
        Assert.Contains("more than the limit", source.LastError?.Message, StringComparison.Ordinal);
    }

    private void WriteInventory(SyntheticCluster cluster, string extra)
    {
        using (var writer = new StreamWriter(InventoryPath, append: false, new UTF8Encoding(false)))
        {
            cluster.WriteYaml(writer);
            writer.Write(extra);
        }
    }

    private FileInventorySource Start(FileInventorySourceOptions? options = null)
    {
        var source = FileInventorySource.Start(InventoryPath, _store, options ?? new FileInventorySourceOptions { PollInterval = TimeSpan.FromHours(1) });
        _sources.Add(source);
        return source;
    }

    private sealed class EndPointOrder : IComparer<IPEndPoint>
    {
        public static readonly EndPointOrder Instance = new();

        public int Compare(IPEndPoint? x, IPEndPoint? y) => string.CompareOrdinal(x?.ToString(), y?.ToString());
    }
}
