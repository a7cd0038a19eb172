using Weft.Identity;

namespace Weft.Tests.Identity;

public class SpiffeIdTests
{
    [Fact]
    public void Parse_WorkloadId_GivesItsParts_AndPrintsTheSame()
    {
        var id = SpiffeId.Parse("spiffe://cluster.local/ns/demo/sa/web-frontend");

        Assert.Equal("cluster.local", id.TrustDomain);
        Assert.Equal("demo", id.Namespace);
        Assert.Equal("web-frontend", id.ServiceAccount);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/web-frontend", id.ToString());
        Assert.Equal(new SpiffeId("cluster.local", "demo", "web-frontend"), id);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("https://cluster.local/ns/a/sa/b", "scheme must be 'spiffe://'")]
    [InlineData("SPIFFE://cluster.local/ns/a/sa/b", "scheme must be lowercase")]
    [InlineData("spiffe://Cluster.local/ns/a/sa/b", "character 'C'")]
    [InlineData("spiffe://cluster.local:8443/ns/a/sa/b", "must not carry a port")]
    [InlineData("spiffe://user@cluster.local/ns/a/sa/b", "must not carry userinfo")]
    [InlineData("spiffe:///ns/a/sa/b", "trust domain is missing")]
    [InlineData("spiffe://cluster.local", "path is missing")]
    [InlineData("spiffe://cluster.local/ns/a/sa/b?x=1", "must not have a query")]
    [InlineData("spiffe://cluster.local/ns/a/sa/b#frag", "must not have a fragment")]
    [InlineData("spiffe://cluster.local/ns/a/sa/b/", "must not end with '/'")]
    [InlineData("spiffe://cluster.local/ns//sa/b", "path segment is empty")]
    [InlineData("spiffe://cluster.local/ns/../sa/b", "'..' is not allowed")]
    [InlineData("spiffe://cluster.local/ns/./sa/b", "'.' is not allowed")]
    [InlineData("spiffe://cluster.local/ns/a%2Fb/sa/b", "percent-encoded")]
    [InlineData("spiffe://cluster.local/ns/a b/sa/b", "character ' '")]
    [InlineData("spiffe://cluster.local/workload/x", "path must be /ns/<namespace>/sa/<service-account>")]
    [InlineData("spiffe://cluster.local/ns/a/sa/b/extra", "path must be /ns/<namespace>/sa/<service-account>")]
    public void TryParse_RefusesWhatTheSpecForbids_SayingWhich(string value, string why)
    {
        Assert.False(SpiffeId.TryParse(value, out var id, out var error));
        Assert.Null(id);
        Assert.Contains(why, error);
        Assert.Throws<FormatException>(() => SpiffeId.Parse(value));
    }

    [Fact]
    public void TryParse_RefusesIdsLongerThan2048Bytes()
    {
        var value = "spiffe://cluster.local/ns/" + new string('a', 2040) + "/sa/b";

        Assert.False(SpiffeId.TryParse(value, out _, out var error));
        Assert.Contains("2048", error);
    }

    [Fact]
    public void Constructor_RefusesAnInvalidTrustDomainOrSegment()
    {
        Assert.Throws<ArgumentException>(() => new SpiffeId("Bad.Domain", "demo", "a"));
        Assert.Throws<ArgumentException>(() => new SpiffeId("cluster.local", "", "a"));
        Assert.Throws<ArgumentException>(() => new SpiffeId("cluster.local", "demo", "a/b"));
    }
}
