#!/usr/bin/env bash
# One-time AWS setup for the CI workflows (README: "CI environments"). Creates, or updates in
# place when run again:
#   - the Pulumi state bucket: private, versioned, encrypted, TLS only, with one folder per GitHub
#     environment (production/, review/, preview/), each initialised (.pulumi/meta.yaml) and
#     readable and writable by that environment's role alone;
#   - GitHub's OIDC identity provider, so workflows get short-lived credentials and no key is stored;
#   - three roles, each assumable only by this repository in one context (the token's `sub`):
#       gha-sdxl-endpoint-preview  the `preview` environment (preview.yml): read-only in EC2
#       gha-sdxl-endpoint-review   the `review` environment (review-env.yml, reaper.yml): deploys, but
#                                  every mutating call needs the tag sdxl-endpoint:stack=pr-* (on what
#                                  it changes, or in the request that creates it), or a pr-* name; it
#                                  can never re-tag another stack's role or key into reach; every role
#                                  it creates or changes carries the permissions boundary below
#       gha-sdxl-endpoint-review-boundary  a managed policy: the most a PR stack's instance role may do
#       gha-sdxl-endpoint-deploy   the `production` environment (deploy.yml)
#
#   ci/bootstrap/aws-oidc.sh OWNER/REPO BUCKET [BUCKET_REGION] [DEPLOY_REGION]
#
# BUCKET_REGION is where the state bucket lives (default us-east-1); DEPLOY_REGION, where the stacks
# deploy (default: the presets' aws:region, stacks/Pulumi.*.yaml).
#
# Needs the AWS CLI v2 and an administrator's credentials, once. It prints the repository
# variables to set. For hard isolation between PR endpoints and production, run it in a
# separate AWS account for the review role.
set -euo pipefail

# json_strings FORMAT ITEM...: the items as JSON strings, comma-separated, each placed by FORMAT (a literal
# with one %s; callers prefix variable parts onto the items, never into the format).
json_strings() {
  local format="\"$1\","
  shift
  # shellcheck disable=SC2059 # the format is the caller's literal
  printf "$format" "$@" | sed 's/,$//'
}

usage="usage: $0 OWNER/REPO BUCKET [BUCKET_REGION] [DEPLOY_REGION]"
repo=${1:?$usage}
bucket=${2:?$usage}
region=${3:-us-east-1}
# Where stacks may deploy: every region an AWS preset pins (aws:region in stacks/Pulumi.*.yaml), and
# DEPLOY_REGION when given. EC2 is allowed in each of them, and nowhere else.
mapfile -t deploy_regions < <({
  sed -n 's/^ *aws:region: *\([a-z0-9-]*\).*/\1/p' "$(dirname "$0")"/../../stacks/Pulumi.*.yaml 2>/dev/null
  [ -z "${4:-}" ] || echo "$4"
} | sort -u)
[ "${#deploy_regions[@]}" -gt 0 ] || deploy_regions=(us-east-1)
deploy_region=${4:-${deploy_regions[0]}}  # the workflows' AWS_REGION (where credentials are issued)
regions_json="[$(json_strings '%s' "${deploy_regions[@]}")]"
project=sdxl-endpoint   # Pulumi project name (Pulumi.yaml)
prefix=gha-sdxl-endpoint  # never matches the sdxl-* names the program gives its own IAM resources

[[ $repo =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || { echo "OWNER/REPO expected, got '$repo'" >&2; exit 2; }
[[ $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || { echo "not an S3 bucket name: '$bucket'" >&2; exit 2; }
for r in "$region" "${deploy_regions[@]}"; do
  [[ $r =~ ^[a-z]{2}(-gov)?-[a-z]+-[0-9]$ ]] || { echo "not an AWS region: '$r'" >&2; exit 2; }
done
command -v aws >/dev/null || { echo "the AWS CLI v2 is required" >&2; exit 1; }

account=$(aws sts get-caller-identity --query Account --output text)
oidc_host=token.actions.githubusercontent.com
provider_arn="arn:aws:iam::$account:oidc-provider/$oidc_host"

echo "==> state bucket s3://$bucket ($region)"
if ! aws s3api head-bucket --bucket "$bucket" 2>/dev/null; then
  if [ "$region" = us-east-1 ]; then
    aws s3api create-bucket --bucket "$bucket" --region "$region" >/dev/null
  else
    aws s3api create-bucket --bucket "$bucket" --region "$region" \
      --create-bucket-configuration "LocationConstraint=$region" >/dev/null
  fi
fi
aws s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
# Versioning keeps every checkpoint: a bad update or a deleted stack can be recovered.
aws s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
aws s3api put-bucket-encryption --bucket "$bucket" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}'
aws s3api put-bucket-policy --bucket "$bucket" --policy "$(cat <<JSON
{"Version":"2012-10-17","Statement":[{"Sid":"TlsOnly","Effect":"Deny","Principal":"*","Action":"s3:*",
 "Resource":["arn:aws:s3:::$bucket","arn:aws:s3:::$bucket/*"],
 "Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}
JSON
)"
# Each folder's layout marker: Pulumi's DIY backend writes it on first use, which a read-only role cannot.
for folder in production review preview; do
  if ! aws s3api head-object --bucket "$bucket" --key "$folder/.pulumi/meta.yaml" >/dev/null 2>&1; then
    printf 'version: 1\n' | aws s3 cp - "s3://$bucket/$folder/.pulumi/meta.yaml" >/dev/null
  fi
done

echo "==> OIDC provider $oidc_host"
if ! aws iam get-open-id-connect-provider --open-id-connect-provider-arn "$provider_arn" >/dev/null 2>&1; then
  aws iam create-open-id-connect-provider --url "https://$oidc_host" --client-id-list sts.amazonaws.com >/dev/null
fi

# trust_policy SUB...: only GitHub tokens for this audience whose subject is one of SUB.
trust_policy() {
  local subs
  subs=$(json_strings 'repo:%s' "${@/#/$repo:}")
  cat <<JSON
{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRoleWithWebIdentity",
 "Principal":{"Federated":"$provider_arn"},
 "Condition":{"StringEquals":{"$oidc_host:aud":"sts.amazonaws.com","$oidc_host:sub":[$subs]}}}]}
JSON
}

# state FOLDER: read and write that environment's folder of the state bucket, list only inside it.
state() {
  cat <<JSON
{"Sid":"StateList","Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::$bucket",
 "Condition":{"StringLike":{"s3:prefix":["$1/*"]}}},
{"Sid":"StateObjects","Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject"],
 "Resource":"arn:aws:s3:::$bucket/$1/*"}
JSON
}

# What `pulumi preview` reads: the look-ups the program makes.
read_statements=$(cat <<JSON
{"Sid":"LookUps","Effect":"Allow","Action":["ec2:Describe*","iam:GetRole","iam:GetInstanceProfile",
 "iam:GetRolePolicy","iam:ListAttachedRolePolicies","iam:ListRolePolicies","iam:ListInstanceProfilesForRole",
 "servicequotas:GetServiceQuota","ssm:DescribeParameters","kms:ListAliases"],"Resource":"*"},
{"Sid":"DeepLearningAmi","Effect":"Allow","Action":["ssm:GetParameter","ssm:GetParameters"],
 "Resource":"arn:aws:ssm:*::parameter/aws/service/*"}
JSON
)

# ec2 TAG_CONDITION_VALUE: what `pulumi up` and `destroy` of the stacks whose sdxl-endpoint:stack tag
# matches the value do in EC2, in the deploy regions. Creating needs the tag in the request; changing or
# deleting needs it on the resource. Tags are added only by the call that creates the resource
# (ec2:CreateAction) or to what already carries the tag: the instance's root volume is tagged in RunInstances
# itself (stacks/aws.py volume_tags), so no untagged volume, another workload's, can be tagged into reach.
# Parts EC2 creates untagged with an instance (its network interface) and the security group rules have no
# tag of their own: they are allowed only next to a tagged instance or group in the same call.
ec2() {
  local stack=$1 in_region="\"aws:RequestedRegion\":$regions_json"
  local requested="\"StringEquals\":{$in_region},\"StringLike\":{\"aws:RequestTag/sdxl-endpoint:stack\":\"$stack\"}"
  local tagged="\"StringEquals\":{$in_region},\"StringLike\":{\"aws:ResourceTag/sdxl-endpoint:stack\":\"$stack\"}"
  local arn="arn:aws:ec2:*:$account"
  cat <<JSON
{"Sid":"Ec2CreateTagged","Effect":"Allow","Action":["ec2:CreateVpc","ec2:CreateInternetGateway",
 "ec2:CreateSubnet","ec2:CreateRouteTable","ec2:CreateSecurityGroup","ec2:AllocateAddress","ec2:CreateVolume",
 "ec2:RunInstances"],"Resource":["$arn:vpc/*","$arn:internet-gateway/*","$arn:subnet/*","$arn:route-table/*",
 "$arn:security-group/*","$arn:elastic-ip/*","$arn:volume/*","$arn:instance/*"],"Condition":{$requested}},
{"Sid":"Ec2CreateInTagged","Effect":"Allow","Action":["ec2:CreateSubnet","ec2:CreateRouteTable",
 "ec2:CreateSecurityGroup","ec2:RunInstances"],"Resource":["$arn:vpc/*","$arn:subnet/*","$arn:security-group/*"],
 "Condition":{$tagged}},
{"Sid":"Ec2LaunchParts","Effect":"Allow","Action":"ec2:RunInstances","Resource":["arn:aws:ec2:*::image/*",
 "$arn:network-interface/*","$arn:volume/*"],"Condition":{"StringEquals":{$in_region}}},
{"Sid":"Ec2TagOnCreate","Effect":"Allow","Action":"ec2:CreateTags","Resource":"$arn:*/*",
 "Condition":{"StringEquals":{$in_region,"ec2:CreateAction":["CreateVpc","CreateInternetGateway","CreateSubnet",
 "CreateRouteTable","CreateSecurityGroup","AllocateAddress","CreateVolume","RunInstances"]}}},
{"Sid":"Ec2ChangeTagged","Effect":"Allow","Action":["ec2:DeleteVpc","ec2:ModifyVpcAttribute",
 "ec2:AttachInternetGateway","ec2:DetachInternetGateway","ec2:DeleteInternetGateway","ec2:DeleteSubnet",
 "ec2:ModifySubnetAttribute","ec2:CreateRoute","ec2:DeleteRoute","ec2:ReplaceRoute","ec2:DeleteRouteTable",
 "ec2:AssociateRouteTable","ec2:DisassociateRouteTable","ec2:ReplaceRouteTableAssociation","ec2:DeleteSecurityGroup",
 "ec2:AuthorizeSecurityGroupIngress","ec2:AuthorizeSecurityGroupEgress","ec2:RevokeSecurityGroupIngress",
 "ec2:RevokeSecurityGroupEgress","ec2:UpdateSecurityGroupRuleDescriptionsIngress",
 "ec2:UpdateSecurityGroupRuleDescriptionsEgress","ec2:ModifySecurityGroupRules","ec2:ReleaseAddress",
 "ec2:AssociateAddress","ec2:DisassociateAddress","ec2:TerminateInstances","ec2:StartInstances",
 "ec2:StopInstances","ec2:ModifyInstanceAttribute","ec2:ModifyInstanceMetadataOptions","ec2:AttachVolume",
 "ec2:DetachVolume","ec2:DeleteVolume","ec2:ModifyVolume","ec2:CreateTags","ec2:DeleteTags"],"Resource":"$arn:*/*",
 "Condition":{$tagged}},
{"Sid":"Ec2UntaggedParts","Effect":"Allow","Action":["ec2:AuthorizeSecurityGroupIngress",
 "ec2:AuthorizeSecurityGroupEgress","ec2:RevokeSecurityGroupIngress","ec2:RevokeSecurityGroupEgress",
 "ec2:UpdateSecurityGroupRuleDescriptionsIngress","ec2:UpdateSecurityGroupRuleDescriptionsEgress",
 "ec2:ModifySecurityGroupRules"],"Resource":"$arn:security-group-rule/*","Condition":{"StringEquals":{$in_region}}},
{"Sid":"Ec2DisassociateFromInterface","Effect":"Allow","Action":"ec2:DisassociateAddress",
 "Resource":"$arn:network-interface/*","Condition":{"StringEquals":{$in_region}}}
JSON
}

# stack_resources STACK_GLOB TAG_CONDITION_VALUE [BOUNDARY_ARN]: the stack's IAM role (tagged), its token
# parameters (/sdxl-endpoint/<stack>/...) and their KMS key (tagged), and its source bucket with the bundle
# (sdxl-src-<stack>-<random>, stacks/aws.py source_bucket_name: S3 buckets take no tag condition, so the name
# is what scopes them; the bundle objects must carry the stack tag as well).
# Tagging is allowed on what the stack tag already marks as the stack's, or while creating (no stack tag
# yet): never to re-tag another stack's role or key into reach. With BOUNDARY_ARN, a role may be created or
# given policies only with that permissions boundary, so what CI lets it hold cannot exceed the boundary.
stack_resources() {
  local names=$1 stack=$2 boundary=${3:-}
  local source_buckets=("sdxl-src-$names") buckets objects
  # Stacks deployed before the stack was in the name hold a sdxl-source-<random> bucket, which their next update
  # replaces: the deploy role may still remove those. Never the review role: such a name says nothing of its stack.
  [ "$names" != "*" ] || source_buckets+=("sdxl-source-*")
  buckets=$(json_strings 'arn:aws:s3:::%s' "${source_buckets[@]}")
  objects=$(json_strings 'arn:aws:s3:::%s/*' "${source_buckets[@]}")
  local tagged="\"StringLike\":{\"aws:ResourceTag/sdxl-endpoint:stack\":\"$stack\"}"
  local requested="\"StringLike\":{\"aws:RequestTag/sdxl-endpoint:stack\":\"$stack\"}"
  local untagged="\"Null\":{\"aws:ResourceTag/sdxl-endpoint:stack\":\"true\"}"
  # Only the program's own tag keys (settings.tags and Name), so creating cannot smuggle in other tags.
  local keys="\"ForAllValues:StringLike\":{\"aws:TagKeys\":[\"sdxl-endpoint:*\",\"Name\"]}"
  local bounded=""
  [ -z "$boundary" ] || bounded=",\"StringEquals\":{\"iam:PermissionsBoundary\":\"$boundary\"}"
  cat <<JSON
{"Sid":"InstanceRoleCreate","Effect":"Allow","Action":"iam:CreateRole",
 "Resource":"arn:aws:iam::$account:role/sdxl-role-*","Condition":{$requested$bounded}},
{"Sid":"InstanceProfileCreate","Effect":"Allow","Action":"iam:CreateInstanceProfile",
 "Resource":"arn:aws:iam::$account:instance-profile/sdxl-profile-*","Condition":{$requested}},
{"Sid":"InstanceRoleTagOnCreate","Effect":"Allow","Action":["iam:TagRole","iam:TagInstanceProfile"],
 "Resource":["arn:aws:iam::$account:role/sdxl-role-*","arn:aws:iam::$account:instance-profile/sdxl-profile-*"],
 "Condition":{$requested,$untagged,$keys}},
{"Sid":"InstanceRoleChange","Effect":"Allow","Action":["iam:DeleteRole","iam:TagRole","iam:UntagRole",
 "iam:UpdateRole","iam:UpdateRoleDescription","iam:UpdateAssumeRolePolicy","iam:DeleteInstanceProfile",
 "iam:TagInstanceProfile","iam:UntagInstanceProfile","iam:AddRoleToInstanceProfile",
 "iam:RemoveRoleFromInstanceProfile"],
 "Resource":["arn:aws:iam::$account:role/sdxl-role-*","arn:aws:iam::$account:instance-profile/sdxl-profile-*"],
 "Condition":{$tagged}},
{"Sid":"InstanceRolePolicy","Effect":"Allow","Action":["iam:PutRolePolicy","iam:DeleteRolePolicy"],
 "Resource":"arn:aws:iam::$account:role/sdxl-role-*","Condition":{$tagged$bounded}},
{"Sid":"OnlySsmPolicy","Effect":"Allow","Action":["iam:AttachRolePolicy","iam:DetachRolePolicy"],
 "Resource":"arn:aws:iam::$account:role/sdxl-role-*",
 "Condition":{"ArnEquals":{"iam:PolicyARN":"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"},$tagged$bounded}},
{"Sid":"PassOnlyToEc2","Effect":"Allow","Action":"iam:PassRole","Resource":"arn:aws:iam::$account:role/sdxl-role-*",
 "Condition":{"StringEquals":{"iam:PassedToService":"ec2.amazonaws.com"},$tagged}},
{"Sid":"TokenParameters","Effect":"Allow","Action":["ssm:PutParameter","ssm:DeleteParameter","ssm:GetParameter",
 "ssm:GetParameters","ssm:AddTagsToResource","ssm:RemoveTagsFromResource","ssm:ListTagsForResource"],
 "Resource":"arn:aws:ssm:*:$account:parameter/sdxl-endpoint/$names/*"},
{"Sid":"TokenKeyCreate","Effect":"Allow","Action":"kms:CreateKey","Resource":"*","Condition":{$requested}},
{"Sid":"TokenKeyTagOnCreate","Effect":"Allow","Action":"kms:TagResource","Resource":"*",
 "Condition":{$requested,$untagged,$keys}},
{"Sid":"TokenKey","Effect":"Allow","Action":["kms:DescribeKey","kms:GetKeyPolicy","kms:GetKeyRotationStatus",
 "kms:EnableKeyRotation","kms:ListResourceTags","kms:TagResource","kms:UntagResource","kms:ScheduleKeyDeletion",
 "kms:Encrypt","kms:Decrypt","kms:GenerateDataKey"],"Resource":"arn:aws:kms:*:$account:key/*",
 "Condition":{$tagged}},
{"Sid":"SourceBucket","Effect":"Allow","Action":["s3:CreateBucket","s3:DeleteBucket","s3:ListBucket",
 "s3:ListBucketVersions","s3:GetBucket*","s3:PutBucketTagging","s3:PutBucketPublicAccessBlock",
 "s3:PutBucketOwnershipControls","s3:PutEncryptionConfiguration","s3:GetEncryptionConfiguration",
 "s3:GetLifecycleConfiguration","s3:GetReplicationConfiguration","s3:GetAccelerateConfiguration"],
 "Resource":[$buckets]},
{"Sid":"SourceBundleWrite","Effect":"Allow","Action":["s3:PutObject","s3:PutObjectTagging"],
 "Resource":[$objects],"Condition":{"StringLike":{"s3:RequestObjectTag/sdxl-endpoint:stack":"$stack"}}},
{"Sid":"SourceBundle","Effect":"Allow","Action":["s3:GetObject","s3:GetObjectTagging","s3:DeleteObject",
 "s3:DeleteObjectVersion"],"Resource":[$objects],
 "Condition":{"StringLike":{"s3:ExistingObjectTag/sdxl-endpoint:stack":"$stack"}}},
{"Sid":"SpotServiceRole","Effect":"Allow","Action":"iam:CreateServiceLinkedRole","Resource":"*",
 "Condition":{"StringEquals":{"iam:AWSServiceName":"spot.amazonaws.com"}}}
JSON
  [ -z "$boundary" ] || cat <<JSON
,{"Sid":"KeepTheBoundary","Effect":"Deny","Action":["iam:DeleteRolePermissionsBoundary",
 "iam:PutRolePermissionsBoundary","iam:CreatePolicy","iam:CreatePolicyVersion","iam:SetDefaultPolicyVersion",
 "iam:DeletePolicy","iam:DeletePolicyVersion"],"Resource":"*"}
JSON
}

# boundary_policy: the most a PR stack's instance role can ever do, whatever policy it is given: what
# stacks/aws.py grants it (its pr-* token parameters through their pr-* key, its source bundle, an ECR pull)
# and AmazonSSMManagedInstanceCore's Session Manager actions. No IAM, no EC2, nothing of production.
boundary_policy() {
  cat <<JSON
{"Version":"2012-10-17","Statement":[
{"Sid":"SessionManager","Effect":"Allow","Action":["ssm:DescribeAssociation",
 "ssm:GetDeployablePatchSnapshotForInstance","ssm:GetDocument","ssm:DescribeDocument","ssm:GetManifest",
 "ssm:ListAssociations","ssm:ListInstanceAssociations","ssm:PutInventory","ssm:PutComplianceItems",
 "ssm:PutConfigurePackageResult","ssm:UpdateAssociationStatus","ssm:UpdateInstanceAssociationStatus",
 "ssm:UpdateInstanceInformation","ssmmessages:CreateControlChannel","ssmmessages:CreateDataChannel",
 "ssmmessages:OpenControlChannel","ssmmessages:OpenDataChannel","ec2messages:AcknowledgeMessage",
 "ec2messages:DeleteMessage","ec2messages:FailMessage","ec2messages:GetEndpoint","ec2messages:GetMessages",
 "ec2messages:SendReply"],"Resource":"*"},
{"Sid":"ItsTokens","Effect":"Allow","Action":"ssm:GetParameter",
 "Resource":"arn:aws:ssm:*:$account:parameter/sdxl-endpoint/pr-*/*"},
{"Sid":"ItsTokenKey","Effect":"Allow","Action":"kms:Decrypt","Resource":"arn:aws:kms:*:$account:key/*",
 "Condition":{"StringLike":{"aws:ResourceTag/sdxl-endpoint:stack":"pr-*"}}},
{"Sid":"ItsSourceBundle","Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::sdxl-src-pr-*/*"},
{"Sid":"PullAnImage","Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchGetImage",
 "ecr:GetDownloadUrlForLayer","ecr:BatchCheckLayerAvailability"],"Resource":"*"}]}
JSON
}

# put_boundary NAME: create the managed policy, or make the current document its default version (keeping
# at most the one older version IAM's five-version limit would otherwise refuse).
put_boundary() {
  local arn="arn:aws:iam::$account:policy/$1"
  if aws iam get-policy --policy-arn "$arn" >/dev/null 2>&1; then
    local old
    for old in $(aws iam list-policy-versions --policy-arn "$arn" \
        --query 'Versions[?!IsDefaultVersion].VersionId' --output text); do
      aws iam delete-policy-version --policy-arn "$arn" --version-id "$old"
    done
    aws iam create-policy-version --policy-arn "$arn" --set-as-default \
      --policy-document "$(boundary_policy)" >/dev/null
  else
    aws iam create-policy --policy-name "$1" --description "$project CI: the most a PR stack's role may do" \
      --policy-document "$(boundary_policy)" >/dev/null
  fi
  echo "$arn"
}

# Production alone may use spot: its requests carry no stack tag, so no condition could scope them.
spot_statements=$(cat <<JSON
{"Sid":"Spot","Effect":"Allow","Action":["ec2:CancelSpotInstanceRequests"],"Resource":"*",
 "Condition":{"StringEquals":{"aws:RequestedRegion":$regions_json}}}
JSON
)

# put_role NAME POLICY_STATEMENTS SUB...
put_role() {
  local name=$1 statements=$2
  shift 2
  if aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam update-assume-role-policy --role-name "$name" --policy-document "$(trust_policy "$@")"
  else
    aws iam create-role --role-name "$name" --max-session-duration 3600 \
      --description "GitHub Actions ($repo): $project CI" \
      --assume-role-policy-document "$(trust_policy "$@")" >/dev/null
  fi
  aws iam put-role-policy --role-name "$name" --policy-name "$project-ci" \
    --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[$statements]}"
  echo "arn:aws:iam::$account:role/$name"
}

echo "==> roles"
boundary_arn=$(put_boundary "$prefix-review-boundary")
preview_arn=$(put_role "$prefix-preview" "$read_statements,$(state preview)" environment:preview)
review_arn=$(put_role "$prefix-review" \
  "$read_statements,$(state review),$(ec2 'pr-*'),$(stack_resources 'pr-*' 'pr-*' "$boundary_arn")" \
  environment:review)
deploy_arn=$(put_role "$prefix-deploy" \
  "$read_statements,$(state production),$(ec2 '*'),$(stack_resources '*' '*'),$spot_statements" environment:production)

cat <<EOF

Done. Set these repository variables (Settings > Secrets and variables > Actions > Variables):
  PULUMI_BACKEND_URL    s3://$bucket?region=$region   (the bucket only: each environment uses its folder)
  AWS_REGION            $deploy_region
  AWS_PREVIEW_ROLE_ARN  $preview_arn
  AWS_REVIEW_ROLE_ARN   $review_arn
  AWS_DEPLOY_ROLE_ARN   $deploy_arn
  AWS_REVIEW_PERMISSIONS_BOUNDARY  $boundary_arn   (review-env.yml gives it to PR stacks' instance roles)
and, in each environment (production, review, preview), its own secret PULUMI_CONFIG_PASSPHRASE
(openssl rand -base64 32 each; keep copies). Never a repository secret: pull requests can read those.
EOF
