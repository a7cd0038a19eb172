using System.Net;
using System.Text;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

public sealed class FileInventorySourceTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-inventory-").FullName;
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

    private static readonly IPEndPoint Vip = IPEndPoint.Parse("10.96.0.10:80");

    /// <summary>The contract's example inventory with service b backed by the given endpoint IPs.</summary>
    private static string Inventory(params string[] endpointIps) => $$$"""
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: a1
          namespace: demo
          labels: {app: a}
          annotations:
            weft.dev/netns: /var/run/netns/weft-ab12-n1-a1
            weft.dev/fail-open: "false"
        spec: {nodeName: node1, serviceAccountName: a}
        status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b, namespace: demo}
        spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: b-1, namespace: demo, labels: {kubernetes.io/service-name: b}}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}]
        endpoints:
        {{{string.Concat(endpointIps.Select(ip => $"- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: node2\n"))}}}
        """;

    private FileInventorySource Start(FileInventorySourceOptions? options = null)
    {
        var source = FileInventorySource.Start(InventoryPath, _store, options);
        _sources.Add(source);
        return source;
    }

    private InventorySnapshot Current => _store.Current;

    private static IPEndPoint[] ReadyEndpoints(InventorySnapshot snapshot)
    {
        Assert.True(snapshot.TryResolveService(Vip, out var target));
        return target.ReadyEndpoints.OrderBy(e => e.ToString()).ToArray();
    }

    private static async Task<T> Eventually<T>(Func<T?> probe, TimeSpan within) where T : class
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            if (probe() is { } value)
            {
                return value;
            }

            Assert.True(DateTime.UtcNow < deadline, "condition not reached in time");
            await Task.Delay(20);
        }
    }

    [Fact]
    public void Start_LoadsTheContractExample_AndPublishesVersionOne()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));

        var source = Start();

        Assert.Equal(1, Current.Version);
        Assert.Null(source.LastError);
        Assert.True(Current.TryGetWorkload(IPAddress.Parse("10.244.1.2"), out var a1));
        Assert.True(a1.Enrolled);
        Assert.Equal("/var/run/netns/weft-ab12-n1-a1", a1.NetnsPath);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", a1.SpiffeId("cluster.local"));
        Assert.Equal([IPEndPoint.Parse("10.244.2.2:8080")], ReadyEndpoints(Current));
    }

    [Fact]
    public async Task EditingTheFile_PublishesANewVersionWithinASecond_WithoutTheRemovedEndpoint()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2", "10.244.2.3"));
        Start(new FileInventorySourceOptions { PollInterval = TimeSpan.FromMinutes(5) }); // the watcher alone must see it
        Assert.Equal(2, ReadyEndpoints(Current).Length);

        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        var next = await _store.WaitForVersionAfterAsync(1).WaitAsync(TimeSpan.FromSeconds(1));

        Assert.Equal([IPEndPoint.Parse("10.244.2.2:8080")], ReadyEndpoints(next));
        Assert.False(next.TryResolveService(Vip, out var target) && target.ReadyEndpoints.Contains(IPEndPoint.Parse("10.244.2.3:8080")));
    }

    [Fact]
    public async Task ReplacingTheFileByRename_AsEditorsDo_IsPickedUp()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2", "10.244.2.3"));
        Start(new FileInventorySourceOptions { PollInterval = TimeSpan.FromMinutes(5) });

        var temporary = Path.Combine(_directory, ".inventory.yaml.swp");
        File.WriteAllText(temporary, Inventory("10.244.2.4"));
        File.Move(temporary, InventoryPath, overwrite: true);
        var next = await _store.WaitForVersionAfterAsync(1).WaitAsync(TimeSpan.FromSeconds(1));

        Assert.Equal([IPEndPoint.Parse("10.244.2.4:8080")], ReadyEndpoints(next));
    }

    [Fact]
    public async Task AChangeTheWatcherCannotSee_BehindASymlink_IsFoundByThePoll()
    {
        var realDirectory = Directory.CreateDirectory(Path.Combine(_directory, "real")).FullName;
        var realFile = Path.Combine(realDirectory, "inventory.yaml");
        File.WriteAllText(realFile, Inventory("10.244.2.2"));
        File.CreateSymbolicLink(InventoryPath, realFile);
        Start(new FileInventorySourceOptions { PollInterval = TimeSpan.FromMilliseconds(200) });

        File.WriteAllText(realFile, Inventory("10.244.2.5"));
        var next = await _store.WaitForVersionAfterAsync(1).WaitAsync(TimeSpan.FromSeconds(3));

        Assert.Equal([IPEndPoint.Parse("10.244.2.5:8080")], ReadyEndpoints(next));
    }

    [Fact]
    public async Task SavingTheSameContentAgain_PublishesNoNewVersion()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        var source = Start();

        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        await Task.Delay(400);

        Assert.True(source.Reload());
        Assert.Equal(1, Current.Version);
    }

    [Fact]
    public async Task MalformedYaml_KeepsThePreviousSnapshot_AndReportsLineAndColumnOnce()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        var source = Start();
        var log = new StringWriter();
        var original = Console.Error;
        Console.SetError(TextWriter.Synchronized(new TeeWriter(original, log)));
        try
        {
            // Line 5 is indented one column more than line 4: YamlDotNet stops at its colon, line 5, column 13.
            File.WriteAllText(InventoryPath, "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n   namespace: demo\n");
            var error = await Eventually(() => source.LastError, TimeSpan.FromSeconds(2));
            File.SetLastWriteTimeUtc(InventoryPath, DateTime.UtcNow.AddSeconds(5)); // same bytes, newer stamp
            Assert.False(source.Reload());

            Assert.Equal(InventoryPath, error.Path);
            Assert.StartsWith($"{InventoryPath}:{error.Line}:{error.Column}: ", error.Message);
            Assert.Equal((5, 13), (error.Line, error.Column));
            Assert.Equal(1, Current.Version);
            Assert.Equal([IPEndPoint.Parse("10.244.2.2:8080")], ReadyEndpoints(Current));
            var errorLines = log.ToString().Split('\n').Where(l => l.Contains(" error inventory: ") && l.Contains(InventoryPath)).ToList();
            Assert.Single(errorLines);
            Assert.Contains(error.Message, errorLines[0]);
            Assert.Contains("keeping inventory version 1", errorLines[0]);
        }
        finally
        {
            Console.SetError(original);
        }
    }

    [Fact]
    public async Task FixingAMalformedFile_ClearsTheErrorAndPublishes()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        var source = Start();
        File.WriteAllText(InventoryPath, "kind: [\n");
        await Eventually(() => source.LastError, TimeSpan.FromSeconds(2));

        File.WriteAllText(InventoryPath, Inventory("10.244.2.6"));
        var next = await _store.WaitForVersionAfterAsync(1).WaitAsync(TimeSpan.FromSeconds(2));

        Assert.Equal([IPEndPoint.Parse("10.244.2.6:8080")], ReadyEndpoints(next));
        Assert.Null(source.LastError);
    }

    [Fact]
    public void WrongFieldType_IsReportedAtTheOffendingValue()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2") + """
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: c, namespace: demo}
            spec:
              ports:
              - port: eighty
            """);
        var line = Inventory("10.244.2.2").Split('\n').Length + 6;

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal((line, 11), (failure.Line, failure.Column));
        Assert.Equal(
            $"{InventoryPath}:{line}:11: in the Service starting at line {line - 5}: a value of the wrong type: The input string 'eighty' was not in a correct format.",
            failure.Message);
    }

    [Fact]
    public void UnknownKind_IsReportedAtItsKindField()
    {
        File.WriteAllText(InventoryPath, "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: weft.dev/v1\nkind: Gizmo\nmetadata: {name: g}\n");

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal($"{InventoryPath}:6:7: unknown kind 'Gizmo' in apiVersion 'weft.dev/v1': KubernetesClient has no type for it", failure.Message);
    }

    [Fact]
    public void FirstLoadFailure_ThrowsWithPathLineAndColumn_AndPublishesNothing()
    {
        File.WriteAllText(InventoryPath, "apiVersion: v1\nkind: Pod\nmetadata: {name: a1, namespace: demo\nspec: {}\n");

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal(InventoryPath, failure.Path);
        Assert.Equal((4, 1), (failure.Line, failure.Column));
        Assert.Equal($"{InventoryPath}:4:1: YAML ended inside an unclosed '{{', '[' or quote opened before this point", failure.Message);
        Assert.Equal(0, Current.Version);
    }

    [Fact]
    public void MalformedTag_IsALoadErrorWithItsPosition_NotABuilderFailure()
    {
        // Found by fuzzing (tests/Fuzz/regressions/inventory): YamlDotNet refused the tag with a bare ArgumentException.
        File.WriteAllText(InventoryPath, "apiVersion: v1\nkind: Namespace\nmetadata: !!+!i {name: demo}\n");

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal((3, 16), (failure.Line, failure.Column)); // just past the tag: where the scanner stopped
        Assert.Equal($"{InventoryPath}:3:16: a YAML tag that is not a valid URI (Global tags must be valid URIs.)", failure.Message);
    }

    [Fact]
    public void NulCharacterInsideAMapping_IsALoadErrorWithItsPosition()
    {
        // Found by fuzzing (tests/Fuzz/regressions/inventory): YamlDotNet ends its input at NUL and threw EndOfStreamException.
        File.WriteAllBytes(InventoryPath, [0x00, 0x00, 0x0a, 0x6d, 0x61, 0x54, 0x61, 0x64, 0x80, 0x74, 0x61, 0x3a, 0x20, 0x7b, 0x6e, 0x61, 0x5f, 0x00, 0x00, 0x10, 0x00, 0x65, 0x6d, 0x00, 0x64, 0x20, 0x6d, 0x65, 0x3a, 0xdf, 0x64, 0x64, 0xed, 0x32, 0x2c, 0x20, 0x6c, 0x64, 0x90, 0x7d, 0x00, 0x2a, 0x2d, 0x2d, 0x56, 0x65, 0x72, 0x73, 0x34, 0x01, 0x6c, 0x64]);

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal(InventoryPath, failure.Path);
        Assert.NotNull(failure.Line);
        Assert.Contains("YAML ended (or holds a NUL character) inside a mapping or list", failure.Message);
    }

    [Fact]
    public void TabIndentation_IsReportedOnTheTabbedLine()
    {
        File.WriteAllText(InventoryPath, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n\tspec: {}\n");

        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.Equal($"{InventoryPath}:4:1: a tab indents this line; YAML indents with spaces only", failure.Message);
    }

    [Fact]
    public void MissingFile_OnFirstLoad_SaysItCannotBeRead()
    {
        var failure = Assert.Throws<InventoryLoadException>(() => Start());

        Assert.StartsWith($"{InventoryPath}: cannot read the inventory file:", failure.Message);
    }

    [Fact]
    public void EmptyDocuments_AndATrailingSeparator_AreAccepted_WithLaterLinesStillTrue()
    {
        File.WriteAllText(InventoryPath, "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n# nothing here\n---\napiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {ports: [{port: x}]}\n---\n");

        var failure = Assert.Throws<InventoryLoadException>(() => Start());
        Assert.Equal((12, 23), (failure.Line, failure.Column));

        File.WriteAllText(InventoryPath, "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n# nothing here\n---\n");
        Start();
        Assert.Equal(["demo"], Current.Namespaces.Select(n => n.Name));
    }

    [Fact]
    public void EmptyFile_IsAnEmptyInventory()
    {
        File.WriteAllText(InventoryPath, "");

        Start();

        Assert.Equal(1, Current.Version);
        Assert.Empty(Current.Workloads);
    }

    [Fact]
    public void Dispose_StopsReloading()
    {
        File.WriteAllText(InventoryPath, Inventory("10.244.2.2"));
        var source = Start();

        source.Dispose();
        File.WriteAllText(InventoryPath, Inventory("10.244.2.3"));
        Thread.Sleep(300);

        Assert.Equal(1, Current.Version);
        Assert.Throws<ObjectDisposedException>(() => source.Reload());
    }

    private sealed class TeeWriter(TextWriter first, TextWriter second) : TextWriter
    {
        public override Encoding Encoding => first.Encoding;

        public override void Write(char value)
        {
            first.Write(value);
            second.Write(value);
        }

        public override void WriteLine(string? value)
        {
            first.WriteLine(value);
            second.WriteLine(value);
        }
    }
}
