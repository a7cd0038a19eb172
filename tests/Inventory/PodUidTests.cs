using k8s.Models;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

/// <summary>
/// The state holds a pod's uid compactly (a GUID as 16 bytes, issue 16): what a user wrote or the API server sent
/// must still come back exactly, also in a standalone file whose uids are not GUIDs, and pods keyed by GUID
/// uids must update and disappear as before.
/// </summary>
public sealed class PodUidTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-pod-uid-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string PodYaml(string name, string ip, string? uid) => $$"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: {{name}}, namespace: demo{{(uid is null ? "" : $", uid: \"{uid}\"")}}}
        spec: {nodeName: node2}
        status: {podIP: {{ip}}}

        """;

    [Theory]
    [InlineData("5d1e7a2b-0c3f-4b8a-9e6d-abcdef012345")] // what the API server sends
    [InlineData("5D1E7A2B-0C3F-4B8A-9E6D-ABCDEF012345")] // a GUID in upper case: kept as written, not respelled
    [InlineData("{5d1e7a2b-0c3f-4b8a-9e6d-abcdef012345}")]
    [InlineData("00000000-0000-0000-0000-000000000000")]
    [InlineData("my-pod-uid-1")] // a hand-written inventory's own naming
    [InlineData("pod 1 / ünïcode")]
    [InlineData("")]
    public void UidInAStandaloneFile_ComesBackExactlyAsWritten(string uid)
    {
        var path = Path.Combine(_directory, "inventory.yaml");
        File.WriteAllText(path, PodYaml("a1", "10.244.2.2", uid) + PodYaml("a2", "10.244.2.3", null));
        var store = new InventoryStore();
        using var source = FileInventorySource.Start(path, store);

        var workloads = store.Current.Workloads.ToDictionary(w => w.Name);
        Assert.Equal(uid.Length == 0 ? null : uid, workloads["a1"].Uid);
        Assert.Null(workloads["a2"].Uid);
    }

    [Fact]
    public void PodsKeyedByGuidUids_AreReplacedAndRemovedByThatUid()
    {
        const string first = "0f3c9e8a-51d7-4e9a-8e2b-7c1d0e4f5501";
        const string second = "0f3c9e8a-51d7-4e9a-8e2b-7c1d0e4f5502";
        var state = new InventoryState(Weft.Policy.PolicyKinds.DefaultMeshRootNamespace);
        state.Upsert(first, Pod("a1", "10.244.2.2", first, "v1"));
        state.Upsert(second, Pod("a2", "10.244.2.3", second, "v1"));
        Assert.Equal(2, state.Snapshot().WorkloadCount);

        state.Upsert(first, Pod("a1", "10.244.2.2", first, "v2"));
        var relabelled = state.Snapshot();
        Assert.Equal(2, relabelled.WorkloadCount);
        Assert.Equal("v2", relabelled.Workloads.Single(w => w.Name == "a1").Labels["version"]);
        Assert.Equal(first, relabelled.Workloads.Single(w => w.Name == "a1").Uid);
        Assert.True(state.Holds(first, Pod("a1", "10.244.2.2", first, "v2")));
        Assert.False(state.Holds(first, Pod("a1", "10.244.2.2", first, "v3")));

        state.Remove(typeof(V1Pod), first);
        Assert.Equal(["a2"], state.Snapshot().Workloads.Select(w => w.Name));

        // A relist that no longer names the second pod removes it too.
        state.RemoveAllExcept(typeof(V1Pod), new HashSet<string>(StringComparer.Ordinal) { first });
        Assert.Equal(0, state.Snapshot().WorkloadCount);
    }

    [Fact]
    public void WorkloadsDifferingOnlyInUid_AreNotEqual_AndEqualUidsAre()
    {
        var a = new Workload { Name = "a", Namespace = "demo", ServiceAccount = "default", Addresses = [], Labels = new Dictionary<string, string>(), Uid = "0f3c9e8a-51d7-4e9a-8e2b-7c1d0e4f5501" };

        Assert.Equal(a, a with { Uid = "0f3c9e8a-51d7-4e9a-8e2b-7c1d0e4f5501" });
        Assert.NotEqual(a, a with { Uid = "0f3c9e8a-51d7-4e9a-8e2b-7c1d0e4f5502" });
        Assert.NotEqual(a, a with { Uid = "0F3C9E8A-51D7-4E9A-8E2B-7C1D0E4F5501" });
        Assert.NotEqual(a, a with { Uid = null });
    }

    private static V1Pod Pod(string name, string ip, string uid, string version) => new()
    {
        ApiVersion = "v1",
        Kind = "Pod",
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "demo", Uid = uid, Labels = new Dictionary<string, string> { ["version"] = version } },
        Spec = new V1PodSpec { NodeName = "node2" },
        Status = new V1PodStatus { PodIP = ip },
    };
}
